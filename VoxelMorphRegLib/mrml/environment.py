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
MINIMUM_TORCH = (2, 1)  # as pyproject.toml
MINIMUM_MONAI = (1, 3)

# Which MONAI fits which torch (the "Requires-Dist" of each MONAI release, checked on PyPI):
# 1.6.x: torch >= 2.8, Python >= 3.10; 1.5.1, 1.5.2: torch >= 2.4.1 (1.5.0 also torch < 2.7);
# 1.4.0: torch >= 1.9, numpy < 2. Installed with --no-deps, so pip never replaces torch, numpy or
# vtk underneath Slicer: the requirement itself has to fit what is there.
_MONAI_FOR = (
    # (lowest torch, lowest Python, numpy below (None: any)) -> requirement
    ((2, 8), (3, 10), None, "monai>=1.6,<1.7"),
    ((2, 4, 1), (3, 9), None, "monai>=1.5.1,<1.6"),
    ((1, 9), (3, 9), (2,), "monai==1.4.0"),
)

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


def version_tuple(text: str | None) -> tuple:
    """``"2.4.1+cu121"`` -> ``(2, 4, 1)``; ``()`` for None or no leading number."""
    parts = []
    for piece in str(text or "").split("+")[0].split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, read from its metadata (nothing is imported)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    except Exception:  # a broken install: treated as absent
        return None


def monai_requirement(torch_version: str, python_version=None, numpy_version: str | None = None) -> str | None:
    """The MONAI requirement (for ``pip install REQ --no-deps``) that fits this torch, Python and numpy; ``None`` if none does."""
    torch = version_tuple(torch_version)
    python = tuple(python_version or sys.version_info[:2])
    numpy = version_tuple(numpy_version) if numpy_version else version_tuple(installed_version("numpy"))
    for lowest_torch, lowest_python, numpy_below, requirement in _MONAI_FOR:
        if torch >= lowest_torch and python >= lowest_python and (numpy_below is None or not numpy or numpy < numpy_below):
            return requirement
    return None


def _specifier_allows(version: tuple, specifiers: str) -> bool:
    """Whether ``version`` meets comma-separated ``>=``, ``>``, ``<=``, ``<``, ``==``, ``!=`` clauses (enough for MONAI's torch clause)."""
    import operator

    compare = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
    for clause in specifiers.split(","):
        clause = clause.strip()
        for symbol in (">=", "<=", "==", "!=", ">", "<"):
            if clause.startswith(symbol):
                bound = version_tuple(clause[len(symbol):].strip())
                width = max(len(bound), len(version))
                padded = lambda v: tuple(v) + (0,) * (width - len(v))  # noqa: E731
                if bound and not compare[symbol](padded(version), padded(bound)):
                    return False
                break
    return True


def monai_torch_requirement() -> str:
    """The torch clause of the installed MONAI's own requirements (e.g. ``">=2.4.1"``), ``""`` if none."""
    import importlib.metadata
    import re

    try:
        requirements = importlib.metadata.requires("monai") or []
    except Exception:
        return ""
    for requirement in requirements:
        if ";" in requirement and "extra" in requirement.split(";", 1)[1]:
            continue
        match = re.match(r"^\s*torch\s*\(?\s*([^;)]*)", requirement)
        if match:
            return match.group(1).strip()
    return ""


def dependency_problems() -> list[str]:
    """What is wrong with the engine's packages, one sentence each saying what to do (empty: all fine).

    Versions are read from the packages' metadata; nothing is imported."""
    problems = []
    missing = missing_packages()
    if missing:
        problems.append(f"missing Python packages: {', '.join(missing)}; install them with VoxelMorphRegLogic().installDependencies() (or click Register)")
    torch = installed_version("torch") if "torch" not in missing else None
    if torch and version_tuple(torch) < MINIMUM_TORCH:
        problems.append(
            f"PyTorch {torch} is too old (VoxelMorphReg needs {'.'.join(map(str, MINIMUM_TORCH))} or later): "
            "update it in the PyTorch Utils module (uninstall, restart Slicer, install) and try again"
        )
    monai = installed_version("monai") if "monai" not in missing else None
    if monai and version_tuple(monai) < MINIMUM_MONAI:
        problems.append(f"MONAI {monai} is too old (VoxelMorphReg needs {'.'.join(map(str, MINIMUM_MONAI))} or later): VoxelMorphRegLogic().installDependencies() installs one that fits")
    elif monai and torch:
        needed = monai_torch_requirement()
        if needed and not _specifier_allows(version_tuple(torch), needed):
            problems.append(f"MONAI {monai} needs torch {needed}, but torch {torch} is installed: VoxelMorphRegLogic().installDependencies() installs a MONAI that fits")
    return problems


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


class DeviceProbe:
    """Finds torch, monai and CUDA in a separate process; :meth:`poll` until it returns a result."""

    def __init__(self, python: str | None = None, timeout_s: float = 120.0):
        self.python = python or engine_python()
        self.timeout_s = timeout_s
        self.process = None
        self.result: DeviceInfo | None = None

    def start(self) -> "DeviceProbe":
        import time

        from .engine_process import popen_group_options

        self._started = time.monotonic()
        # Its own process group: behind Slicer's PythonSlicer launcher, the interpreter that may hang
        # (in a CUDA initialisation) is the launcher's child; a kill must reach it too.
        self.process = subprocess.Popen(
            [self.python, "-c", _PROBE_CODE],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=engine_environment(),
            **popen_group_options(),
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
                self.cancel()
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
        """Kill the probe and what it started (the launcher's child), at once."""
        from .engine_process import kill_tree

        if self.process is not None and self.process.returncode is None:
            kill_tree(self.process)
            self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()
