"""bench/benchmark.py: skips cleanly without data, judges targets right, and its --smoke run works end to end."""

import importlib.util
import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "bench" / "benchmark.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_skips_cleanly_without_data(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "absent"), "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "benchmark skipped" in done.stdout
    assert not (tmp_path / "r.json").exists()


def _report(smoke=False, cpu_network=2.5, rss=3.5e9, dice=0.80, ants_dice=0.78, cuda=None):
    devices = {
        "cpu": {
            "network": {"median": {"network_s": cpu_network}, "device_name": "CPU"},
            "register": {"peak_rss_bytes": rss, "dice30": dice, "refine": 0},
        }
    }
    if cuda is not None:
        devices["cuda"] = {"network": {"median": {"network_s": cuda[0]}, "device_name": cuda[1]}}
    return {"smoke": smoke, "devices": devices, "ants": {"dice30": ants_dice, "median_total_s": 100.0}}


def test_targets_pass_fail_and_unmeasured():
    bench = _load_benchmark()
    rows = {r["target"]: r for r in bench.evaluate(_report())}
    assert rows["network inference, CPU <= 3 s"]["verdict"] == "PASS"
    assert rows["peak memory of one register, CPU <= 4 GB"]["verdict"] == "PASS"
    assert rows["Dice30 network (refine 0) > ANTs SyN"]["verdict"] == "PASS"
    assert rows["network inference, H200 after warm-up <= 20 ms"]["verdict"] == "-"

    rows = {r["target"]: r for r in bench.evaluate(_report(cpu_network=3.2, rss=4.1e9, dice=0.70, cuda=(0.025, "NVIDIA A100")))}
    assert rows["network inference, CPU <= 3 s"]["verdict"] == "FAIL"
    assert rows["peak memory of one register, CPU <= 4 GB"]["verdict"] == "FAIL"
    assert rows["Dice30 network (refine 0) > ANTs SyN"]["verdict"] == "FAIL"
    cuda_row = rows["network inference, H200 after warm-up <= 20 ms"]
    assert cuda_row["verdict"] == "FAIL" and "not an H200" in cuda_row["value"]

    assert {r["verdict"] for r in bench.evaluate(_report(smoke=True))} == {"n/a (smoke)"}


def test_smoke_run_end_to_end(shared_data, tmp_path):
    out = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--data", str(shared_data / "aseg"), "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "NOT the benchmark" in done.stdout
    report = json.loads(out.read_text())
    assert report["smoke"] is True
    cpu = report["devices"]["cpu"]
    assert cpu["network"]["median"]["network_s"] > 0
    assert cpu["register"]["median_seconds"]["total"] > 0 and cpu["register"]["peak_rss_bytes"] > 0
    assert 0 <= cpu["register"]["dice30"] <= 1
    assert report["ants"].get("skipped") or 0 <= report["ants"]["dice30"] <= 1
    assert {r["verdict"] for r in report["targets"]} == {"n/a (smoke)"}
