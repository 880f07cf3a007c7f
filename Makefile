# The two commands of the README: `make demo` (main job) and `make test`.
# Both create .venv when it is missing and install effdeploy with the pinned constraints
# (constraints.txt pins the CPU build of torch; an unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.effdeploy-installed
PHI ?= 1
VARIANT ?= lite
WEIGHTS ?= pretrained
PRECISION ?= int8
PROFILE ?= jetson-orin
OUT ?= bundles/efficientnet-$(VARIANT)$(PHI)-$(PRECISION)-$(PROFILE)
WEIGHTS_FLAG := $(if $(WEIGHTS),--weights $(WEIGHTS),)

.PHONY: install demo test test-all clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[build,pretrained,test,openvino,plot]"
	# Triton's own ModelConfig schema for the export tests: its generated model_config_pb2 needs only
	# protobuf; --no-deps keeps the HTTP/gRPC client's dependencies (which would move ml_dtypes) out.
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt tritonclient
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/effdeploy build --phi $(PHI) --variant $(VARIANT) $(WEIGHTS_FLAG) --precision $(PRECISION) --profile $(PROFILE) --out $(OUT)
	$(BIN)/effdeploy inspect $(OUT)

# Tests run on TEST_WORKERS processes (pytest-xdist): one core each is what most tests use.
# Files stay on one worker (--dist loadfile) so module fixtures are built once.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m slow tests

clean:
	rm -rf $(VENV) bundles
