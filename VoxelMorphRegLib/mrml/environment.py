"""Which Python runs the engine, whether its packages are there, and which devices it can use.

Nothing here imports torch: packages are looked up with ``importlib.util.find_spec`` and the
devices are found by a short separate process (:class:`DeviceProbe`), so the application's
main thread never pays for loading PyTorch (or for a CUDA initialisation that hangs).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The folder holding VoxelMorphRegLib (the module's folder); goes on the engine's PYTHONPATH.
MODULE_FOLDER = Path(__file__).resolve().parents[2]

REQUIRED_PACKAGES = ("torch", "monai")

_PROBE_CODE = r"""
import json, sys
info = {"torch": None, "monai": None, "cuda": False, "cuda_devices": [], "mps": False, "error": ""}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = bool(torch.cuda.is_available())
    if info["cuda"]:
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
except Exception as exc:
    info["error"] = f"{type(exc).__name__}: {exc}"
try:
    import monai
    info["monai"] = monai.__version__
except Exception:
    pass
sys.stdout.write(json.dumps(info))
"""


def in_slicer_application() -> bool:
    """Whether this runs inside the Slicer application (not only with the MRML libraries)."""
    slicer = sys.modules.get("slicer")
    return slicer is not None and getattr(slicer, "app", None) is not None


def engine_python() -> str:
    """The Python interpreter to run the engine with.

    ``VOXELMORPHREG_PYTHON`` if set; inside Slicer its ``PythonSlicer`` launcher (Slicer's own
    Python with Slicer's environment); otherwise the running interpreter.
    """
    override = os.environ.get("VOXELMORPHREG_PYTHON")
    if override:
        return override
    if in_slicer_application():
        found = shutil.which("PythonSlicer")
        if found:
            return found
        for folder in (Path(sys.executable).parent, Path(sys.executable).parent.parent / "bin"):
            for name in ("PythonSlicer.exe", "PythonSlicer"):
                if (folder / name).exists():
                    return str(folder / name)
    return sys.executable


def engine_environment(extra: dict | None = None) -> dict:
    """Environment for the engine process: module folder first on PYTHONPATH, unbuffered UTF-8 output."""
    env = dict(os.environ)
    paths = [str(MODULE_FOLDER)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if extra:
        env.update(extra)
    return env


def missing_packages(names=REQUIRED_PACKAGES) -> list[str]:
    """Packages of ``names`` that this interpreter cannot find (without importing them)."""
    missing = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


@dataclass
class DeviceInfo:
    torch: str | None = None
    monai: str | None = None
    cuda: bool = False
    cuda_devices: list = field(default_factory=list)
    mps: bool = False
    error: str = ""

    def summary(self) -> str:
        if not self.torch:
            return "PyTorch not installed" + (f" ({self.error})" if self.error else "")
        if self.cuda:
            return "CUDA: " + ", ".join(self.cuda_devices or ["GPU"])
        return "CPU only (no CUDA GPU found)"


def _popen_options() -> dict:
    if os.name == "nt":
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {}


class DeviceProbe:
    """Finds torch, monai and CUDA in a separate process; :meth:`poll` until it returns a result."""

    def __init__(self, python: str | None = None, timeout_s: float = 120.0):
        self.python = python or engine_python()
        self.timeout_s = timeout_s
        self.process = None
        self.result: DeviceInfo | None = None

    def start(self) -> "DeviceProbe":
        import time

        self._started = time.monotonic()
        self.process = subprocess.Popen(
            [self.python, "-c", _PROBE_CODE],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=engine_environment(),
            **_popen_options(),
        )
        return self

    def poll(self) -> DeviceInfo | None:
        import time

        if self.result is not None:
            return self.result
        if self.process is None:
            self.start()
        if self.process.poll() is None:
            if time.monotonic() - self._started > self.timeout_s:
                self.process.kill()
                self.process.wait()
                self.result = DeviceInfo(error="device check timed out")
            return self.result
        output = self.process.stdout.read() if self.process.stdout else b""
        self.process.stdout.close()
        try:
            self.result = DeviceInfo(**json.loads(output.decode("utf-8", "replace") or "{}"))
        except (ValueError, TypeError):
            self.result = DeviceInfo(error=f"device check failed (exit code {self.process.returncode})")
        return self.result

    def wait(self) -> DeviceInfo:
        import time

        while self.poll() is None:
            time.sleep(0.05)
        return self.result

    def cancel(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
