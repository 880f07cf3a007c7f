"""Bad input and interruption, the way a new user meets them: every case of issue 14 and the
inputs that were already handled well, through the real console entry point (one subprocess per
case), one row each: exit code, the first line of stderr, what was left behind.

    python bench/bad_inputs.py            # ~45 cases; most fail in the first second
    python bench/bad_inputs.py --only 4   # the cases of one issue item (or a word of their name)

Every case's ``--out`` points into one work folder, and the cases share a fresh cache folder (so
the builds reuse one export); "leftovers" are the files and folders a case created that it should
not have (``.partial-`` staging folders, temp files in the cache, a half bundle). The few cases that need a bundle share one tiny
FP32 EfficientNet-Lite0 at 64 px, built once by the SIGKILL case (killed mid-build, then rebuilt).
A row is ``ok`` when the exit code, the expected words on stderr and the leftovers are as stated.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAMERA = REPO / "examples" / "camera_classify.py"
LITE = ("--phi", "0", "--variant", "lite", "--resolution", "64")
BUNDLE = "shared/bundle"  # built by the SIGKILL case, read by later ones


@dataclass(frozen=True)
class Case:
    """One input: what to run, what must come back, what may stay behind."""

    item: str  # issue 14's item ("1".."11", "out" for output people read), or "-" for already well handled
    name: str
    argv: tuple[str, ...]  # effdeploy arguments ("{w}" = the work folder), or a script's with program
    code: int
    needles: tuple[str, ...]  # each must appear on stderr
    program: str = "effdeploy"  # or "camera", or "python" (argv is python code)
    env: dict[str, str] = field(default_factory=dict)
    interrupt_on: str | None = None  # send SIGINT when this appears on stderr (long builds)
    kill_on: str | None = None  # SIGKILL when this path glob appears in the work folder
    keep: tuple[str, ...] = ()  # globs that may be created (a bundle the case is meant to write)
    leaves: str | None = None  # a glob that must be left behind (what a SIGKILL leaves)
    timeout: float = 600.0


def w(*parts: str) -> str:
    return "{w}/" + "/".join(parts)


def cases() -> list[Case]:
    """The inputs, issue items first, then the ones that were already well handled."""
    out = ("--out", w("out"))
    build = ("build", *LITE, *out)
    int8 = ("build", *LITE, "--precision", "int8", "--calib-images", "4", "--no-repair", *out)
    return [
        # 9: killed outright mid-build, then the same --out again (this also builds the shared bundle)
        Case("9", "SIGKILL mid-build leaves a partial", ("build", *LITE, "--out", w(BUNDLE)), -9, (),
             kill_on="shared/.bundle.partial-*", leaves="shared/.bundle.partial-*"),
        # 9 and 1: the same --out again removes it; a corrupt image among the verification images is skipped
        Case("9+1", "rebuild; --verify-data with a corrupt image",
             ("build", *LITE, "--out", w(BUNDLE), "--verify-data", w("good+1")), 0,
             ("removed .bundle.partial-", "left by a build whose process is gone",
              "skipped 1 unreadable verification image"), keep=(BUNDLE, BUNDLE + "/*")),
        Case("9", "SIGKILL mid-write of a cache entry", (KILL_MID_WRITE,), 0, ("entry intact, temp file removed",),
             program="python"),
        Case("1", "verify --data with a corrupt image", ("verify", w(BUNDLE), "--data", w("good+1")), 0,
             ("skipped 1 unreadable verification image",)),
        # 2: data checked before the model is built
        Case("2", "--calib-data: empty folder", (*int8, "--calib-data", w("empty")), 2, ("no images under",)),
        Case("2", "--calib-data: only corrupt images", (*int8, "--calib-data", w("corrupt-only")), 2,
             ("none of the 2 images",)),
        Case("2", "--calib-data: a video that is not one", (*int8, "--calib-data", w("fake.mp4")), 2, ("OpenCV cannot open",)),
        Case("2", "--calib-data: .npy of the wrong shape", (*int8, "--calib-data", w("wrong.npy")), 2, ("has shape",)),
        Case("2", "--calib-data: too few images to leave any to verify",
             ("build", *LITE, "--precision", "int8", *out, "--calib-data", w("five")), 2,
             ("leaves none to verify on", "the default --calib-images")),
        Case("2", "--verify-data: only corrupt images", (*build, "--verify-data", w("corrupt-only")), 2,
             ("none of the 2 images",)),
        # 3: a directory where a file is expected
        Case("3", "--weights DIR", (*build, "--weights", w("empty")), 2, ("is a directory",)),
        Case("3", "--profile x.toml that is a directory", (*build, "--profile", w("dir.toml")), 2, ("is a directory",)),
        Case("3", "classify DIR", ("classify", w(BUNDLE), w("empty")), 2, ("is a directory",)),
        # 4: sizes no machine has
        Case("4", "--resolution 100000", ("build", "--phi", "0", "--resolution", "100000", *out), 2,
             ("would need about", "this machine has")),
        Case("4", "--phi 100", ("build", "--phi", "100", *out), 2, ("would need about",)),
        Case("4", "--phi 1e6", ("build", "--phi", "1e6", *out), 2, ("overflows",)),
        Case("4", "--num-classes 10**9", ("build", *LITE, "--num-classes", "1000000000", *out), 2, ("would need about",)),
        Case("4", "--variant lite --phi 9: progress, then the warning", ("build", "--phi", "9", "--variant", "lite", *out),
             130, ("[1/4] efficientnet-lite9", "extrapolated", "interrupted"), interrupt_on="extrapolated"),
        # 5: click's own usage errors in the house format
        Case("5", "--variant c", (*build, "--variant", "c"), 2, ("effdeploy: error: ", "'b', 'lite'")),
        Case("5", "--precision int4", (*build, "--precision", "int4"), 2, ("'fp32', 'fp16', 'int8'",)),
        Case("5", "--calib-method kl", (*build, "--calib-method", "kl"), 2, ("'entropy', 'mse'",)),
        Case("5", "--calib-images x", (*build, "--calib-images", "x"), 2, ("is not a valid integer",)),
        Case("5", "unknown option --varient", (*build, "--varient", "b"), 2, ("Did you mean '--variant'",)),
        Case("5", "missing --phi", ("build", *out), 2, ("Missing option '--phi'",)),
        Case("5", "unknown command", ("bogus",), 2, ("No such command 'bogus'",)),
        # 6, 7
        Case("6", "classify --top-k 5000", ("classify", w(BUNDLE), w("good+1", "img_000.jpg"), "--top-k", "5000"), 2,
             ("more than the 1000 classes",)),
        Case("7", "camera --max-frames 0", (w(BUNDLE), "--headless", "--source", w("fake.mp4"), "--max-frames", "0"), 2,
             ("--max-frames must be at least 1",), program="camera"),
        Case("7", "camera --threads -1", (w(BUNDLE), "--headless", "--source", w("fake.mp4"), "--threads", "-1"), 2,
             ("--threads must be at least 1",), program="camera"),
        # 8: an unusable cache folder is said once, up front
        Case("8", "EFFDEPLOY_CACHE_DIR is a file", build, 130, ("cache folder", "cannot be used", "interrupted"),
             env={"EFFDEPLOY_CACHE_DIR": w("afile")}, interrupt_on="[1/4]"),
        # 10: replacing an existing bundle is said (and an interrupted replacement keeps the old one)
        Case("10", "--out is an existing bundle", ("build", *LITE, "--out", w(BUNDLE)), 130,
             ("replacing the bundle at", "interrupted"), interrupt_on="replacing", keep=(BUNDLE, BUNDLE + "/*")),
        # already well handled
        Case("-", "--phi -1", ("build", "--phi", "-1", *out), 2, ("--phi must be a number >= 0",)),
        Case("-", "--phi one", ("build", "--phi", "one", *out), 2, ("--phi must be a number >= 0",)),
        Case("-", "--resolution 16", ("build", "--phi", "0", "--resolution", "16", *out), 2, ("at least 32",)),
        Case("-", "--num-classes 0", (*build, "--num-classes", "0"), 2, ("--num-classes must be at least 1",)),
        Case("-", "--seed -1", (*build, "--seed", "-1"), 2, ("--seed must be",)),
        Case("-", "--profile mars-rover", (*build, "--profile", "mars-rover"), 2, ("unknown profile 'mars-rover'",)),
        Case("-", "--profile missing.toml", (*build, "--profile", w("missing.toml")), 2, ("does not exist",)),
        Case("-", "--precision int8 --profile jetson-nano", (*build, "--precision", "int8", "--profile", "jetson-nano"), 2,
             ("no fast int8 kernels",)),
        Case("-", "--weights garbage.pth", (*build, "--weights", w("garbage.pth")), 2, ("cannot read weights",)),
        Case("-", "--weights missing.pth", (*build, "--weights", w("missing.pth")), 2, ("does not exist",)),
        Case("-", "--weights pretrained --phi 3", ("build", "--phi", "3", "--variant", "lite", "--weights", "pretrained",
                                                    *out), 2, ("exists only for",)),
        Case("-", "--out is a file", ("build", *LITE, "--out", w("afile")), 2, ("is not a directory",)),
        Case("-", "--out is a folder of other files", ("build", *LITE, "--out", w("notabundle")), 2, ("not a bundle",)),
        Case("-", "--calib-data missing", (*int8, "--calib-data", w("missing")), 2, ("does not exist",)),
        Case("-", "--calib-data notes.txt", (*int8, "--calib-data", w("notes.txt")), 2, ("not a supported kind",)),
        Case("-", "--accuracy-budget 150", (*build, "--accuracy-budget", "150"), 2, ("--accuracy-budget is a percentage",)),
        Case("-", "--max-kept-macs 0", (*build, "--max-kept-macs", "0"), 2, ("--max-kept-macs",)),
        Case("-", "--int8-float wings", (*build, "--int8-float", "wings"), 2, ("--int8-float takes",)),
        Case("-", "--min-agreement 120", (*build, "--min-agreement", "120"), 2, ("between 0 and 100",)),
        Case("-", "inspect a missing path", ("inspect", w("missing")), 2, ("does not exist",)),
        Case("-", "inspect a text file", ("inspect", w("notes.txt")), 2, ("neither a bundle",)),
        Case("-", "verify a folder that is not a bundle", ("verify", w("notabundle")), 2, ("not a bundle",)),
        Case("-", "verify --images 0", ("verify", w(BUNDLE), "--images", "0"), 2, ("--images must be at least 1",)),
        Case("-", "classify a missing image", ("classify", w(BUNDLE), w("missing.jpg")), 2, ("does not exist",)),
        Case("-", "classify a corrupt image", ("classify", w(BUNDLE), w("corrupt-only", "a.jpg")), 2, ("cannot read image",)),
        Case("-", "classify --top-k 0", ("classify", w(BUNDLE), w("good+1", "img_000.jpg"), "--top-k", "0"), 2,
             ("at least 1",)),
        Case("-", "bench --batch x", ("bench", w(BUNDLE), "--batch", "x"), 2, ("--batch",)),
        Case("-", "bench --threads 0", ("bench", w(BUNDLE), "--threads", "0"), 2, ("--threads must be",)),
        Case("-", "compile an FP32 bundle on DLA", ("compile", w(BUNDLE), "--profile", "jetson-orin", "--dla-core", "0",
                                                     "--dry-run"), 2, ("DLA has no FP32 kernels",)),
        Case("-", "compile --trt-version banana", ("compile", w(BUNDLE), "--trt-version", "banana", "--dry-run"), 2,
             ("banana",)),
    ]


# A child process writes a cache entry with the atomic writer and is killed (SIGKILL) after the
# data is written, before the rename; the entry must still hold the previous content, and the
# next write of the same entry removes the temp file the dead child left.
KILL_MID_WRITE = r"""
import os, signal, subprocess, sys, time
from pathlib import Path
from effdeploy.files import atomic_write
entry = Path(os.environ["EFFDEPLOY_CACHE_DIR"]) / "kill-test" / "entry.json"
atomic_write(entry, "old")
child = subprocess.Popen([sys.executable, "-c", '''
import os, sys, time
import effdeploy.files as b
def stall(*a):
    print("written", flush=True); time.sleep(60)
b.os.replace = stall
b.atomic_write(sys.argv[1], "new" * 100000)
''', str(entry)], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "written"
child.send_signal(signal.SIGKILL); child.wait()
left = [p.name for p in entry.parent.iterdir() if p.name != "entry.json"]
assert entry.read_text() == "old" and len(left) == 1, (entry.read_text()[:10], left)
atomic_write(entry, "newer")
assert sorted(p.name for p in entry.parent.iterdir()) == ["entry.json"], list(entry.parent.iterdir())
print("entry intact, temp file removed", file=sys.stderr)
"""


def make_inputs(root: Path) -> None:
    """The files the cases point at: good images (from the built-in photos), a truncated JPEG,
    an empty folder, a fake video, a wrong array, a folder named like a TOML file, ..."""
    import numpy as np

    from effdeploy.data.datasets import write_builtin_variants

    good = root / "good+1"
    write_builtin_variants(good, 256)
    data = (good / "img_000.jpg").read_bytes()
    (good / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "empty").mkdir()
    (root / "corrupt-only").mkdir()
    (root / "corrupt-only" / "a.jpg").write_bytes(b"not a jpeg")
    (root / "corrupt-only" / "b.png").write_bytes(data[:100])
    (root / "five").mkdir()
    for k in range(5):
        shutil.copy(good / f"img_{k:03d}.jpg", root / "five" / f"{k}.jpg")
    (root / "fake.mp4").write_bytes(b"\x00" * 4096)
    np.save(root / "wrong.npy", np.zeros((2, 3, 32, 32), np.float32))
    (root / "dir.toml").mkdir()
    (root / "notes.txt").write_text("not a model\n")
    (root / "afile").write_text("x\n")
    (root / "garbage.pth").write_bytes(b"garbage")
    (root / "notabundle").mkdir()
    (root / "notabundle" / "precious.txt").write_text("keep me\n")


def snapshot(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def run_case(case: Case, work: Path, cache: Path) -> tuple[int, list[str], list[str], float]:
    """(exit code, stderr lines, leftovers, seconds)."""
    import fnmatch

    argv = [a.replace("{w}", str(work)) for a in case.argv]
    if case.program == "camera":
        cmd = [sys.executable, str(CAMERA), *argv]
    elif case.program == "python":
        cmd = [sys.executable, "-c", argv[0]]
    else:
        cmd = [sys.executable, "-m", "effdeploy", *argv]
    env = {**os.environ, "EFFDEPLOY_CACHE_DIR": str(cache),
           **{k: v.replace("{w}", str(work)) for k, v in case.env.items()}}
    before = snapshot(work)
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, text=True)
        while proc.poll() is None:
            time.sleep(0.2)
            if case.interrupt_on:
                err.flush()
                err.seek(0)
                if case.interrupt_on in err.read():
                    proc.send_signal(signal.SIGINT)
                    break
            if case.kill_on and any(work.glob(case.kill_on)):
                proc.send_signal(signal.SIGKILL)
                break
            if time.perf_counter() - t > case.timeout:
                proc.kill()
                break
        code = proc.wait()
        err.seek(0)
        lines = [l.rstrip() for l in err.read().splitlines() if l.strip()]
    seconds = time.perf_counter() - t
    new = sorted(snapshot(work) - before)
    leftovers = [p for p in new if not any(fnmatch.fnmatch(p, g) for g in case.keep)]
    leftovers += [f"cache:{p.name}" for p in cache.rglob("*.tmp")]
    return code, lines, leftovers, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run the cases of one issue item ('4') or whose name holds a word")
    a = ap.parse_args()
    from effdeploy.report import table

    chosen = cases()
    if a.only:
        chosen = [c for c in chosen if c.item == a.only or a.only.lower() in c.name.lower()]
    rows, bad = [], 0
    with tempfile.TemporaryDirectory(prefix="effdeploy-bad-inputs-") as tmp:
        work, cache = Path(tmp) / "work", Path(tmp) / "cache"
        make_inputs(work)
        (work / "shared").mkdir()
        for case in chosen:
            code, lines, leftovers, seconds = run_case(case, work, cache)
            text = "\n".join(lines)
            missing = [n for n in case.needles if n not in text]
            tb = "Traceback" in text or "internal error" in text
            shown = next((l for l in lines if case.needles and case.needles[0] in l), lines[0] if lines else "")
            import fnmatch

            left_ok = (any(fnmatch.fnmatch(p, case.leaves) for p in leftovers) if case.leaves else not leftovers)
            ok = code == case.code and not missing and not tb and left_ok
            bad += not ok
            first = (lines[0] if lines else "-").replace(str(work), "W")
            left = [p for p in leftovers if "/" not in p.removeprefix("shared/")] if case.leaves else leftovers
            rows.append((case.item, case.name, code, f"{seconds:.1f}", first[:110] + ("..." if len(first) > 110 else ""),
                         ", ".join(left)[:60] or "none", "ok" if ok else f"BAD (expected {case.code}"
                         + (f", missing {missing[0]!r}" if missing else "") + (", traceback" if tb else "") + ")"))
            if shown != first and not ok:
                print(f"  [{case.name}] {shown}", file=sys.stderr)
    print(table(rows, headers=["item", "input", "exit", "time s", "first line of stderr", "leftovers", "verdict"]))
    print(f"\nW = the work folder. {len(rows) - bad} of {len(rows)} inputs handled as expected "
          "(exit code, the expected words on stderr, no traceback, nothing half-written left)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
