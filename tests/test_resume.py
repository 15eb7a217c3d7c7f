"""Resumable runs (method section 5): 2 + 2 outer iterations with a stop between give exactly the
images of one uninterrupted 4-iteration run, for IDC and UDD; SIGINT saves the last outer boundary
and exits 130; a corrupt or mismatched checkpoint is refused with exit status 2."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from udd_fast.checkpoint import load_checkpoint
from udd_fast.distill import main as distill_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# smoke preset with one inner iteration per outer (every inner step is then an outer boundary's split step)
SMOKE = ("--preset", "smoke", "--inner-loop", "1", "--ipc", "1", "--eval-runs", "0", "--no-progress",
         "--no-download", "--dataset", "mnist")


def _flags(data_dir, method, tmp):
    extra = ("--method", method)
    if method == "udd":
        extra += ("--proxy-cache", str(tmp / "proxy"))
    return (*SMOKE, "--data-dir", str(data_dir), *extra)


def _images(out):
    return torch.load(out / "distilled.pt", weights_only=True)["images"]


@pytest.fixture(scope="module", params=["idc", "udd"])
def straight(request, real_data_dir, tmp_path_factory):
    """(method, flags, images of one uninterrupted 4-iteration run)."""
    tmp = tmp_path_factory.mktemp(f"straight-{request.param}")
    flags = _flags(real_data_dir, request.param, tmp)
    assert distill_main([*flags, "--iterations", "4", "--out", str(tmp / "run")]) == 0
    return request.param, flags, _images(tmp / "run")


def test_two_plus_two_equals_four(straight, tmp_path):
    method, flags, want = straight
    out = tmp_path / "run"
    assert distill_main([*flags, "--iterations", "2", "--out", str(out)]) == 0
    assert load_checkpoint(out)["state"]["outer_done"] == 2
    first = _images(out)
    assert distill_main(["--resume", str(out), "--iterations", "4", "--data-dir", flags[flags.index("--data-dir") + 1],
                         "--no-progress"]) == 0
    assert torch.equal(_images(out), want)
    assert not torch.equal(first, want)  # the resumed part really moved the images
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_outer"] == 2 and summary["iterations"] == 4 and summary["method"] == method
    assert load_checkpoint(out)["state"]["outer_done"] == 4


def test_sigint_saves_the_last_boundary_and_resumes(straight, tmp_path):
    method, flags, want = straight
    if method != "idc":
        pytest.skip("one signal test is enough (the state is the same for both methods)")
    out = tmp_path / "run"
    # bitwise equality holds for the same device, build and thread count: the interrupted run in the
    # child uses this process's thread count, like the reference and the resumed part computed here
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, "-m", "udd_fast.distill", *flags, "--iterations", "30", "--out", str(out)],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "checkpoint.pt" in err and "--resume" in err
    done = load_checkpoint(out)["state"]["outer_done"]
    assert 1 <= done < 30
    if done > 4:
        pytest.skip(f"the machine was too slow to stop within 4 outer iterations (stopped after {done})")
    assert distill_main(["--resume", str(out), "--iterations", "4", "--data-dir",
                         flags[flags.index("--data-dir") + 1], "--no-progress"]) == 0
    assert torch.equal(_images(out), want)


def test_corrupt_or_mismatched_checkpoint_is_refused(real_data_dir, tmp_path, capsys):
    flags = _flags(real_data_dir, "idc", tmp_path)
    out = tmp_path / "run"
    assert distill_main([*flags, "--iterations", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    # a flag that changes what is computed must match the checkpoint's config
    assert distill_main(["--resume", str(out), "--ipc", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--ipc 2 differs" in err and "checkpoint.pt" in err
    assert distill_main(["--resume", str(out), "--iterations", "0", "--no-progress"]) == 2
    assert "below the 1 outer" in capsys.readouterr().err
    # a truncated file: a clear error naming it, never a silent restart
    ck = out / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:200])
    assert distill_main(["--resume", str(out), "--data-dir", str(real_data_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(ck) in err and "not a readable checkpoint" in err
    assert distill_main(["--resume", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
