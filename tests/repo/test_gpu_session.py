"""bench/gpu_session.py, the one prepared GPU command, runs end to end as a CPU dry run: every stage
passes, its files fit what the device tool brings back (at most 8, none nested), the loop table
covers every mode of the engine, and a budget too small for a stage skips it, saying so."""
import json
import re
import subprocess
import sys

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import loop_timing  # noqa: E402

pytestmark = pytest.mark.integration  # every test here starts processes

SESSION = [sys.executable, str(REPO / "bench" / "gpu_session.py")]


def test_dry_run_passes_every_stage(tmp_path, real_data_dir):
    out = tmp_path / "session"
    carried = tmp_path / "gpu_data"  # what a GPU machine gets: MNIST alone
    carried.mkdir()
    (carried / "MNIST").symlink_to((real_data_dir / "MNIST").resolve())
    r = subprocess.run([*SESSION, "--dry-run", "--out", str(out), "--data-dir", str(carried),
                        "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((out / "session.json").read_text())
    assert meta["dry_run"] is True
    assert [s["stage"] for s in meta["stages"]] == ["build", "loop", "large", "gpu_check", "engine", "tests"]  # figures first
    assert all(s["status"] == "ok" for s in meta["stages"]), meta["stages"]
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() for f in files), files
    assert "correctness PASSED" in (out / "gpu_check.log").read_text()
    # both parts of the CUDA test subset were collected and are not empty
    counts = [int(n) for n in re.findall(r"^(\d+)(?:/\d+)? tests? collected", (out / "tests.log").read_text(), re.M)]
    assert len(counts) == 2 and min(counts) > 0, counts
    loop = (out / "loop.log").read_text()
    for label, _, precision, _, _ in loop_timing.modes("cpu", tiny=True):
        assert f"| 1 | {label} | {precision} |" in loop
    assert re.search(r"wall \d+\.\d+ ms, busy \d+\.\d+ ms, \d+ kernel launches", loop), loop
    assert re.search(r"^\| 1 \| \d+ \| \d\.\d \| \d+\.\d+ \|$", loop, re.M), loop  # the host's work (--host)
    assert re.search(r"^\| off \| 2 \| \d+ \| \d+\.\d\dx \|$", loop, re.M), loop  # networks trained ahead
    large = (out / "large.log").read_text()  # Tiny-ImageNet's and ImageNet-10's shapes (tiny: 16 px, 3 classes)
    assert large.count("| 1 | batched, static | fp32 |") == 4  # 2 shapes; each row printed as it comes, then in its table
    assert large.count("| 1 | batched, static, staged from host memory | fp32 |") == 4  # and staged from host memory
    assert re.search(r"^\| together, grouped \(on\) \| \d+\.\d \|$", loop, re.M), loop  # an evaluation's runs grouped
    engine = (out / "engine.log").read_text()
    assert engine.count("distillation done") == 2 and "mUE" in engine
    assert "| loop | ok |" in (out / "session.md").read_text()


def test_quick_runs_the_loop_alone(tmp_path, real_data_dir):
    # a budget too small for any stage: --quick's plan is the loop stage alone (the dry run above runs that stage)
    out = tmp_path / "session"
    r = subprocess.run([*SESSION, "--dry-run", "--quick", "--budget", "5", "--out", str(out), "--data-dir",
                        str(real_data_dir), "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((out / "session.json").read_text())
    assert meta["quick"] is True and [(s["stage"], s["status"]) for s in meta["stages"]] == [("loop", "skipped")]


def test_a_small_budget_skips_what_would_overrun(tmp_path, real_data_dir):
    out = tmp_path / "session"
    r = subprocess.run([*SESSION, "--dry-run", "--out", str(out), "--data-dir", str(real_data_dir), "--budget", "5"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    stages = json.loads((out / "session.json").read_text())["stages"]
    assert len(stages) == 6 and all(s["status"] == "skipped" and "would overrun" in s["note"] for s in stages)


def test_refuses_a_data_dir_without_mnist(tmp_path):
    r = subprocess.run([*SESSION, "--dry-run", "--out", str(tmp_path / "s"), "--data-dir", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and str(tmp_path) in r.stderr and "MNIST" in r.stderr
    assert not (tmp_path / "s").exists()
