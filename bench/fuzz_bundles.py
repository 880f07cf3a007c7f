"""Fuzz what a device opens: a real bundle (B0 at 64 px, a frame-in graph, a labels file) and an
engine manifest, mutated in seeded ways, each opened through the real console entry point
(`inspect`, `classify`, `bench`) in this process. One row per class of mutation:

* refused: exit 2 with one line ``effdeploy: error: ...``
* ran: exit 0 (or 3): the mutation left a bundle that is still whole and valid (e.g. a flipped bit
  inside a note); only allowed where the class does not have to be refused
* bad: anything else (an internal error, a traceback, a second line, a timeout)
* outside: files opened outside the bundle's folder (besides Python's own, the cache and the test image)

An engine.json naming another TensorRT version or GPU is refused by the TensorRT runner, which needs
TensorRT to open at all; without it every engine ends in "TensorRT is not installed", so that class
is not fuzzed here (its rule has tests: tests/backends/tensorrt/test_manifest.py).

A class is green when nothing is bad or outside, every mutation it must refuse is refused, and none
takes longer than ``--max-seconds``.

    python bench/fuzz_bundles.py [--mutations 200] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    name: str
    must_refuse: bool
    n: int = 0
    refused: int = 0
    ran: int = 0
    bad: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    max_s: float = 0.0

    def green(self, max_seconds: float) -> bool:
        return not self.bad and not self.outside and self.max_s <= max_seconds and (
            not self.must_refuse or self.refused == self.n)


# --- the bundle under attack ----------------------------------------------------------------------


def make_subjects(root: Path) -> tuple[Path, Path, Path]:
    """A real bundle (built by effdeploy), an engine.plan of opaque bytes with its engine.json, and
    an image to classify, all under ``root``; a secret file beside them that nothing may read."""
    from effdeploy.backends.tensorrt.manifest import EngineManifest, GpuInfo, write_engine_manifest
    from effdeploy.data.datasets import builtin_image_paths
    from effdeploy.data.frames import parse_frames
    from effdeploy.pipeline import BuildRequest, build_bundle
    from effdeploy.profiles import load_profile

    labels = root / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(1000)))
    bundle = root / "pristine" / "bundle"
    build_bundle(BuildRequest(phi=0, resolution=64, profile=load_profile("cpu"), out=bundle, quiet=True,
                              labels=str(labels), frames=parse_frames("128x96")))
    plan = root / "pristine" / "engine" / "engine.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(random.Random(1).randbytes(4096))
    m = load_json(bundle / "manifest.json")
    write_engine_manifest(plan, EngineManifest(
        tensorrt_version="10.3.0", gpu=GpuInfo("Orin", "8.7").to_dict(), profile=load_profile("jetson-orin").to_dict(),
        precision="fp32", onnx_sha256=m["artifacts"]["model.onnx"]["sha256"], calibration_sha256=None,
        io=({"name": "input", "mode": "input", "dtype": "float32", "shape": [-1, 3, 64, 64], "min": [1, 3, 64, 64],
             "opt": [1, 3, 64, 64], "max": [4, 3, 64, 64]},
            {"name": "logits", "mode": "output", "dtype": "float32", "shape": [-1, 1000]}),
        preprocessing=m["model"]["preprocessing"], build={"hardware_compat": "none", "version_compatible": False},
        bundle={"path": str(bundle), "model": m["model"]["name"]}))
    image = root / "cat.jpg"
    shutil.copy(builtin_image_paths()[0], image)
    (root / "outside.txt").write_text("secret\n")
    return bundle, plan, image


def load_json(p: Path):
    return json.loads(p.read_text())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rehash(bundle: Path, name: str) -> None:
    """What an attacker does after editing an artifact: the manifest's hash and size follow it."""
    m = load_json(bundle / "manifest.json")
    data = (bundle / name).read_bytes()
    m["artifacts"][name] = {"sha256": sha(data), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(m))


# --- mutations: each edits a fresh copy (bundle folder, engine folder) -------------------------------


def flip(data: bytes, rng: random.Random, bits: int = 1) -> bytes:
    b = bytearray(data)
    for _ in range(bits):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def set_path(d: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


BAD_VALUES = [10 ** 12, -1, 0, "224", None, [], {}, 1e308, True, "x" * 70000]
VALUE_PATHS = [("model", "resolution"), ("model", "num_classes"), ("model", "phi"), ("model", "width"),
               ("model", "preprocessing", "resize"), ("model", "preprocessing"), ("model",), ("artifacts",),
               ("frames",), ("labels",)]
PATH_TRICKS = ["../outside.txt", "/etc/hostname", "../../outside.txt", "sub/../../outside.txt", ".manifest.json",
               "..", "model.onnx/../../outside.txt", "%2e%2e/outside.txt", "~/outside.txt", "a\x00b"]


def mutations(rng: random.Random) -> list[tuple[str, bool, Callable[[Path, Path], None]]]:
    """(class, must it be refused, edit(bundle, plan)) for one seeded draw of every class."""
    secret_sha = sha(b"secret\n")

    def manifest_edit(fn):
        def edit(b: Path, _p: Path) -> None:
            m = load_json(b / "manifest.json")
            fn(m, b)
            (b / "manifest.json").write_text(json.dumps(m))
        return edit

    name = rng.choice(PATH_TRICKS)
    value_path, value = rng.choice(VALUE_PATHS), rng.choice(BAD_VALUES)
    kind = rng.choice(["model.onnx", "labels.txt", "frame", "manifest-listed"])

    def art_of(b: Path) -> str:
        names = sorted(load_json(b / "manifest.json")["artifacts"])
        frames = [n for n in names if "frame" in n]
        return {"frame": frames[0] if frames else "model.onnx",
                "manifest-listed": names[len(names) // 2]}.get(kind, kind)
    cut = rng.random()
    depth = rng.randrange(40, 5000)

    def truncate(p: Path) -> None:
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * cut)])

    def path_trick(m, b):
        m["artifacts"][name] = {"sha256": secret_sha, "bytes": 7}

    def symlink_out(b: Path, _p: Path) -> None:
        (b / "labels.txt").unlink()
        (b / "labels.txt").symlink_to(b.parent.parent / "outside.txt")
        m = load_json(b / "manifest.json")
        m["artifacts"]["labels.txt"] = {"sha256": secret_sha, "bytes": 7}
        (b / "manifest.json").write_text(json.dumps(m))

    def external_data_out(b: Path, _p: Path) -> None:
        import onnx

        model = onnx.load(str(b / "model.onnx"))
        t = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        n = len(t.raw_data)
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", name if name != "a\x00b" else "../outside.txt"), ("offset", "0"), ("length", str(n))):
            e = t.external_data.add()
            e.key, e.value = k, v
        onnx.save(model, str(b / "model.onnx"))
        rehash(b, "model.onnx")

    def swap_files(b: Path, _p: Path) -> None:
        a, c = b / "model.onnx", b / art_of(b) if kind != "model.onnx" else b / "labels.txt"
        da, dc = a.read_bytes(), c.read_bytes()
        a.write_bytes(dc)
        c.write_bytes(da)

    def deep(b: Path, _p: Path) -> None:
        m = load_json(b / "manifest.json")
        m["notes"] = "__DEEP__"
        text = json.dumps(m).replace('"__DEEP__"', "[" * depth + "]" * depth)
        (b / "manifest.json").write_text(text)

    def engine_json_edit(fn):
        def edit(_b: Path, p: Path) -> None:
            j = p.with_name("engine.json")
            fn(j)
        return edit

    return [
        ("manifest truncated", True, lambda b, p: truncate(b / "manifest.json")),
        ("manifest bit flips", False, lambda b, p: (b / "manifest.json").write_bytes(
            flip((b / "manifest.json").read_bytes(), rng, rng.randrange(1, 4)))),
        ("manifest deep or huge", True, deep if rng.random() < 0.5 else
         (lambda b, p: (b / "manifest.json").write_bytes(b"[" * depth * 50 + b"]" * depth * 50))),
        ("manifest wrong types / absurd values", True, manifest_edit(lambda m, b: set_path(m, value_path, value))),
        ("artifact name path tricks", True, manifest_edit(path_trick)),
        ("artifact symlinked outside", True, symlink_out),
        ("ONNX external data outside", True, external_data_out),
        ("artifact truncated", True, lambda b, p: truncate(b / art_of(b))),
        ("artifact bit flips", True, lambda b, p: (b / art_of(b)).write_bytes(flip((b / art_of(b)).read_bytes(), rng))),
        ("artifact bit flips, re-hashed", False, lambda b, p: ((b / art_of(b)).write_bytes(
            flip((b / art_of(b)).read_bytes(), rng, 8)), rehash(b, art_of(b)))),
        ("artifacts swapped", True, swap_files),
        ("artifact missing", True, lambda b, p: (b / art_of(b)).unlink()),
        ("engine.json truncated", True, engine_json_edit(lambda j: j.write_bytes(j.read_bytes()[: int(len(j.read_bytes()) * cut)]))),
        ("engine.json bit flips", False, engine_json_edit(lambda j: j.write_bytes(flip(j.read_bytes(), rng, 2)))),
        ("engine plan bit flips / truncated", True, lambda b, p: p.write_bytes(
            flip(p.read_bytes(), rng) if rng.random() < 0.5 else p.read_bytes()[: int(len(p.read_bytes()) * cut)])),
    ]


# --- running one command in this process ----------------------------------------------------------


class Opened:
    """Files opened while a command runs (Python's audit hook for ``open``)."""

    paths: list[str] = []
    on = False

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.on and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            cls.paths.append(os.fsdecode(args[0]))


def run_cli(argv: list[str], timeout: float) -> tuple[int, str, float, list[str]]:
    from effdeploy.commands import main

    def alarm(*_):
        raise TimeoutError(f"over {timeout} s")

    err, out = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    Opened.paths, Opened.on = [], True
    t = time.perf_counter()
    code = 0
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # a timeout outside main's own handler
                code = 124
                print(f"{type(e).__name__}: {e}", file=sys.stderr)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        Opened.on = False
    return code, err.getvalue(), time.perf_counter() - t, list(Opened.paths)


def outcome(row: Row, code: int, err: str, seconds: float, opened: list[str], root: Path, allowed: list[Path]) -> None:
    row.n += 1
    row.max_s = max(row.max_s, seconds)
    lines = [line for line in err.splitlines()
             if line.strip() and not line.startswith(("note:", "warning:", "effdeploy: warning:"))]
    if code == 2 and len(lines) == 1 and lines[0].startswith("effdeploy: error:"):
        row.refused += 1
    elif code in (0, 3) and not any(line.startswith("effdeploy:") for line in lines):
        row.ran += 1
    else:
        row.bad.append(f"exit {code}: {' | '.join(lines)[:200]}")
    for p in opened:
        rp = os.path.realpath(p)
        if rp.startswith(str(root)) and not any(rp.startswith(str(a)) for a in allowed):
            row.outside.append(rp)


def fuzz(count: int, seed: int, max_seconds: float, quiet: bool = False) -> list[Row]:
    if not getattr(Opened, "installed", False):
        sys.addaudithook(Opened.hook)
        Opened.installed = True
    rng = random.Random(seed)
    rows: dict[str, Row] = {}
    with tempfile.TemporaryDirectory(prefix="effdeploy-fuzz-") as tmp:
        root = Path(tmp).resolve()
        bundle, plan, image = make_subjects(root)
        classes = len(mutations(random.Random(0)))
        for i in range(count):
            name, must, edit = mutations(rng)[i % classes]
            case = root / f"case{i}"
            b, p = case / "bundle", case / "engine" / "engine.plan"
            shutil.copytree(bundle, b)
            shutil.copytree(plan.parent, p.parent)
            edit(b, p)
            target = str(p) if name.startswith("engine") else str(b)
            argv = rng.choice([["inspect", target], ["classify", target, str(image)],
                               ["bench", target, "--batch", "1", "-n", "2", "--warmup", "1"]])
            if name.startswith("engine") and argv[0] == "inspect":
                argv = ["classify", target, str(image)]
            row = rows.setdefault(name, Row(name, must))
            outcome(row, *run_cli(argv, timeout=max(30.0, 3 * max_seconds)), root=root,
                    allowed=[case, image, Path(os.environ.get("EFFDEPLOY_CACHE_DIR", "/nonexistent"))])
            shutil.rmtree(case, ignore_errors=True)
            if not quiet and (i + 1) % 25 == 0:
                print(f"  {i + 1}/{count} mutations", file=sys.stderr)
    return list(rows.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutations", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t = time.perf_counter()
    rows = fuzz(args.mutations, args.seed, args.max_seconds, quiet=args.json)
    ok = all(r.green(args.max_seconds) for r in rows)
    if args.json:
        print(json.dumps({"mutations": args.mutations, "seed": args.seed, "green": ok,
                          "rows": [{**r.__dict__, "green": r.green(args.max_seconds)} for r in rows]}))
        return 0 if ok else 1
    from effdeploy.report import table

    print(table([(r.name, r.n, "yes" if r.must_refuse else "no", r.refused, r.ran, len(r.bad), len(r.outside),
                  f"{r.max_s:.2f}", "green" if r.green(args.max_seconds) else "RED") for r in rows],
                ["mutation", "n", "must refuse", "refused (exit 2, one line)", "ran", "bad", "read outside", "max s",
                 "verdict"]))
    for r in rows:
        for b in r.bad[:3]:
            print(f"  {r.name}: {b}")
        for o in r.outside[:3]:
            print(f"  {r.name}: opened {o}")
    print(f"{args.mutations} mutations (seed {args.seed}) in {time.perf_counter() - t:.0f} s: "
          f"{'all green' if ok else 'NOT all green'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
