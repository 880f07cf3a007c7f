"""The package's layering, checked: the stages import only from stages before them, and the
device side (``runtime``, ``backends``, ``profiles``) imports nothing from the build side.

Stages in pipeline order (docs/architecture.md):

    shared -> data -> model -> export -> calibration -> precision -> verify -> bundle
    device: backends, profiles  (usable by any stage; import only shared, data, bundle, device)
    runtime                      (imports only shared, data, bundle, device)
    top: commands, pipeline, __main__ (may import anything; nothing imports them)

Every import statement counts, lazy (in-function) ones too, read from the source as text
(tools/import_cycles.py), so it needs neither torch nor TensorRT.

Usage: python tools/layering.py   (prints each import that breaks the order; exit 1 when one does)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_cycles import REPO, edges, modules  # noqa: E402

STAGES = ["shared", "data", "model", "export", "calibration", "precision", "verify", "bundle"]
SHARED = {"effdeploy", "effdeploy.errors", "effdeploy.report", "effdeploy.files", "effdeploy.cache",
          "effdeploy.request"}
DEVICE_MAY_IMPORT = {"shared", "data", "bundle", "device", "runtime"}


def layer(module: str) -> str:
    """The stage a module belongs to (its subpackage, or its own name at the package root)."""
    if module in SHARED:
        return "shared"
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    if name in ("backends", "profiles"):
        return "device"
    if name in ("commands", "pipeline", "__main__", "sweep"):
        return "top"
    if name in STAGES or name == "runtime":
        return name
    raise SystemExit(f"tools/layering.py: {module} belongs to no stage; add it to the table")


def allowed(src: str, dst: str) -> bool:
    if src == "top":
        return True
    if dst == "top":
        return False
    if src in ("device", "runtime"):
        return dst in DEVICE_MAY_IMPORT and not (src == "device" and dst == "runtime")
    if dst == "device":
        return True  # the ONNX Runtime runner, timing and profiles serve every stage
    if dst == "runtime":
        return False
    return STAGES.index(dst) <= STAGES.index(src)


def violations() -> list[str]:
    mods = modules()
    out = []
    for src, targets in edges(mods).items():
        for dst, line, lazy in sorted(set(targets)):
            if not allowed(layer(src), layer(dst)):
                out.append(f"{mods[src].relative_to(REPO)}:{line}: {src} ({layer(src)}) imports {dst} "
                           f"({layer(dst)}){' lazily' if lazy else ''}")
    return out


def main() -> int:
    found = violations()
    for v in found:
        print(v)
    print(f"{len(found)} import(s) against the stage order")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
