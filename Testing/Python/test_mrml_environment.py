"""Dependencies and the device check: which MONAI fits which torch, what is reported, and a probe that hangs."""

import os
import sys
import textwrap
import time

import pytest

from VoxelMorphRegLib.mrml import environment


@pytest.mark.parametrize(
    "torch, python, numpy, expected",
    [
        ("2.8.0+cu128", (3, 12), "2.1.3", "monai>=1.6,<1.7"),  # Slicer 5.10 (Python 3.12)
        ("2.8.0", (3, 9), "1.26.4", "monai>=1.5.1,<1.6"),  # Slicer 5.6/5.8 (Python 3.9): MONAI 1.6 needs Python 3.10
        ("2.4.1", (3, 9), "2.0.2", "monai>=1.5.1,<1.6"),
        ("2.6.0", (3, 12), "2.0", "monai>=1.5.1,<1.6"),  # 1.6 needs torch 2.8
        ("2.3.1", (3, 9), "1.26.4", "monai==1.4.0"),  # older torch: 1.4.0, which wants numpy < 2
        ("2.3.1", (3, 12), "2.0.1", None),  # nothing fits: torch too old for a MONAI that takes numpy 2
    ],
)
def test_monai_is_picked_to_fit_torch_python_and_numpy(torch, python, numpy, expected):
    assert environment.monai_requirement(torch, python, numpy) == expected


def test_versions_and_specifiers():
    assert environment.version_tuple("2.4.1+cu121") == (2, 4, 1) and environment.version_tuple("1.6.0rc1") == (1, 6, 0)
    assert environment.version_tuple(None) == () and environment.version_tuple("dev") == ()
    assert environment._specifier_allows((2, 6), "<2.7.0,>=2.4.1") and not environment._specifier_allows((2, 7), "<2.7.0,>=2.4.1")
    assert environment._specifier_allows((2, 8), ">=2.8.0") and not environment._specifier_allows((2, 4), ">=2.4.1")


def _installed(monkeypatch, versions, monai_requires=()):
    monkeypatch.setattr(environment, "missing_packages", lambda names=environment.REQUIRED_PACKAGES: [n for n in names if versions.get(n) is None])
    monkeypatch.setattr(environment, "installed_version", lambda name: versions.get(name))
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "requires", lambda name: list(monai_requires))


def test_problems_say_what_does_not_fit_and_what_to_do(monkeypatch):
    _installed(monkeypatch, {"torch": "2.3.1", "monai": "1.5.2", "numpy": "1.26.4"}, ["torch>=2.4.1", "numpy<3.0,>=1.24", "nibabel; extra == 'nibabel'"])
    (problem,) = environment.dependency_problems()
    assert problem.startswith("MONAI 1.5.2 needs torch >=2.4.1, but torch 2.3.1 is installed") and "installDependencies()" in problem
    _installed(monkeypatch, {"torch": "2.0.1", "monai": "1.3.2"}, ["torch>=1.9"])
    assert environment.dependency_problems()[0].startswith("PyTorch 2.0.1 is too old (VoxelMorphReg needs 2.1 or later)")
    _installed(monkeypatch, {"torch": None, "monai": None})
    assert environment.dependency_problems()[0].startswith("missing Python packages: torch, monai")
    _installed(monkeypatch, {"torch": "2.8.0", "monai": "1.6.1", "numpy": "2.1"}, ["torch>=2.8.0", "numpy<3.0,>=1.24"])
    assert environment.dependency_problems() == []


def test_the_installed_packages_here_fit():
    if environment.missing_packages():
        pytest.skip("torch or monai not installed")
    assert environment.dependency_problems() == []


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True


@pytest.mark.skipif(os.name == "nt", reason="process groups")
def test_a_probe_that_hangs_behind_a_launcher_is_killed_with_its_child(tmp_path):
    """Slicer's PythonSlicer is a launcher that runs the interpreter as its child: a kill must reach the child
    (a CUDA initialisation that hangs), not only the launcher."""
    record = tmp_path / "child.pid"
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import signal, subprocess, sys
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        child = subprocess.Popen([{sys.executable!r}, "-c", "import os, time; open({str(record)!r}, 'w').write(str(os.getpid())); time.sleep(120)"])
        sys.exit(child.wait())
        """))
    launcher.chmod(0o755)
    probe = environment.DeviceProbe(python=str(launcher), timeout_s=1.0).start()
    deadline = time.monotonic() + 20
    while not record.exists() or not record.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(record.read_text())
    while probe.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert probe.result.error == "device check timed out"
    time.sleep(0.2)
    assert not _alive(child) and not _alive(probe.process.pid)
