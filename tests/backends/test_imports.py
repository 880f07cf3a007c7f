"""The backends' import discipline: device-side modules pull in neither torch nor TensorRT, and no
import cycle touches the backends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_device_side_modules_import_neither_torch_nor_tensorrt():
    code = (
        "import sys; import effdeploy.backends.tensorrt.runner, effdeploy.backends.tensorrt.manifest, "
        "effdeploy.backends.tensorrt.plan, effdeploy.backends.tensorrt.build, "
        "effdeploy.backends.tensorrt.compat, effdeploy.commands.compile; "
        "bad = [m for m in ('torch', 'tensorrt') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_import_cycle_touches_the_backends():
    """Every import statement of the package, lazy ones included (tools/import_cycles.py)."""
    script = Path(__file__).resolve().parents[2] / "tools" / "import_cycles.py"
    r = subprocess.run([sys.executable, str(script), "--prefix", "effdeploy.backends"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
