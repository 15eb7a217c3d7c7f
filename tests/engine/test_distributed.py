"""Distributed distillation (udd_fast.distributed): N gloo processes compute what one process does.

- float64, engine level: IDC at 2 ranks, UDD at 2 and 3 ranks (uneven class and batch shares)
  against one process; CutMix partners cross ranks, and for UDD the regions, the jitter noise keyed
  per formation and the merged CFC prototypes: the images at every gradient point, the final state,
  the region boxes, and the bytes sent.
- the CLI under torchrun: 1 process vs 2, a distributed --resume, two nodes vs one, a killed and a
  hung rank (stopped within the timeout, state saved, resumable), Ctrl-C, impossible layouts refused.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from udd_fast.checkpoint import load_checkpoint
from udd_fast.config import build_config
from udd_fast.distributed import Comm, partition
from udd_fast.engine import Engine

import dist_worker  # the worker beside this file, also run by torchrun as a script
from helpers import REPO

# The one difference between N ranks and one process: a network-update gradient is the sum of the
# ranks' partial sums (all-reduced) instead of one sum over the batch. In float64 that reorders
# additions at ~1e-16 relative per step; through 3 outer iterations with an image lr of 30 (pixels
# reach ~1e2 between clamps) the worst measured difference at a gradient point is 2e-12 absolute
# (2 and 3 ranks, IDC and UDD, 2026-11-25); the bound is 1e-10 times the values' scale.
F64_TOL = 1e-10


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank, world, port):
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
               LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def _launch(cmd, world, **kw):
    """`world` processes of cmd with the environment torchrun gives its workers."""
    port = _free_port()
    return [subprocess.Popen(cmd, env=_env(r, world, port), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, **kw) for r in range(world)]


def _wait_all(procs, timeout=600):
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        outs.append((p.returncode, out, err))
    return outs


def test_partition_covers_disjoint_and_balanced():
    for n in (1, 7, 10, 64, 100):
        for world in range(1, min(n, 9) + 1):
            parts = [partition(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.fixture(scope="module")
def single(real_data_dir):
    """One process's float64 runs, by method: (Engine, {(outer, inner, class): images at the gradient},
    pixels on the bounds after the clamps of outer iterations 1 and 2)."""
    out = {}
    for method in ("idc", "udd"):
        d, events = dist_worker.run(real_data_dir, method)
        clamped = sum(int(((e[4] == 0) | (e[4] == 1)).sum()) for e in events if e[0] == "boundary" and e[1] > 0)
        out[method] = d, {e[1:4]: e[4] for e in events if e[0] == "grad"}, clamped
    return out


def _scale_close(a, b):
    return float((a - b).abs().max()) <= F64_TOL * max(1.0, float(a.abs().max()))


# 3 ranks: uneven shares (classes 3/3/4, network batches of 8 split 2/3/3)
@pytest.mark.integration
@pytest.mark.parametrize("method,world", [("idc", 2), ("udd", 2), ("udd", 3)])
def test_ranks_compute_what_one_process_does_float64(single, real_data_dir, tmp_path, method, world):
    d1, grads1, clamped = single[method]
    procs = _launch([sys.executable, str(Path(dist_worker.__file__)), str(real_data_dir), method,
                     str(tmp_path)], world)
    for rc, out, err in _wait_all(procs):
        assert rc == 0, err[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    # every class's gradient points, each taken by the rank that owns the class, as in one process
    grads = {}
    for r, got in enumerate(ranks):
        lo, hi = got["classes"]
        for ev, o, i, c, rows in got["events"]:
            if ev == "grad":
                assert lo <= c < hi, f"rank {r} took a gradient of class {c} it does not own"
                grads[(o, i, c)] = rows
    assert grads.keys() == grads1.keys() and len(grads) == 3 * 2 * 10
    worst = max(float((grads[k] - grads1[k]).abs().max()) for k in grads)
    print(f"worst gradient-point difference {worst:.3g}")
    assert all(_scale_close(grads1[k], grads[k]) for k in grads), worst
    # the merged state is the same on every rank and matches one process
    want = d1.state()
    assert clamped > 100  # the clamp was active, so the split step mattered
    for got in ranks:
        st = got["state"]
        for k in ("S", "buf", "pending"):
            assert _scale_close(want[k], st[k]), (k, float((want[k] - st[k]).abs().max()))
        assert st["net_batch"] == want["net_batch"] == 30
        assert st["last_loss"] == pytest.approx(want["last_loss"], rel=1e-10)
        if method == "udd":
            assert torch.equal(st["region_boxes"], want["region_boxes"])
            assert st["policy_counts"] == want["policy_counts"]
            assert want["policy_counts"]["jitter"] > 0 and want["policy_counts"]["response"] > 0
    # and every rank's merged copy is bitwise the same (rank 0's checkpoint is everyone's state)
    for got in ranks[1:]:
        assert torch.equal(got["state"]["S"], ranks[0]["state"]["S"])
    # CutMix was drawn in some of the 30 network batches, so partners crossed rank boundaries
    from udd_fast import rng
    from udd_fast.train import cutmix_draw
    assert any(cutmix_draw(rng.key(rng.key(0, "net_update", b), "cutmix"), 8, 28, 28, "cpu") for b in range(30))
    # payload bytes: the flat gradient of every network batch, prototypes (UDD) per inner iteration
    net = d1.new_network(0)
    params = sum(p.numel() for p in net.parameters())
    for got in ranks:
        b = got["bytes"]
        assert b["network gradients"] == 30 * params * 8
        assert got["calls"]["network gradients"] == 30
        assert b["state: images"] == 3 * d1.S.numel() * 8
        if method == "udd":
            dim = net.classifier.in_features
            assert b["cfc prototypes"] == 3 * 2 * 10 * dim * 8
        else:
            assert "cfc prototypes" not in b


@pytest.mark.integration
def test_ranks_with_networks_trained_ahead_compute_what_one_process_does(single, real_data_dir, tmp_path):
    """--trajectory-batch 3 (the 3 outer iterations as one group) under 2 ranks, UDD: the class-parallel
    matching is unchanged (every gradient point, the merged state, the region boxes as one interleaved
    process has them); each rank trains the whole trajectories itself, so no network gradient is sent."""
    d1, grads1, _ = single["udd"]
    procs = _launch([sys.executable, str(Path(dist_worker.__file__)), str(real_data_dir), "udd", str(tmp_path), "3"],
                    2)
    for rc, out, err in _wait_all(procs):
        assert rc == 0, err[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    grads = {e[1:4]: e[4] for got in ranks for e in got["events"] if e[0] == "grad"}
    assert grads.keys() == grads1.keys()
    worst = max(float((grads[k] - grads1[k]).abs().max()) for k in grads)
    print(f"worst gradient-point difference {worst:.3g}")
    assert all(_scale_close(grads1[k], grads[k]) for k in grads), worst
    want = d1.state()
    for got in ranks:
        st = got["state"]
        for k in ("S", "buf", "pending"):
            assert _scale_close(want[k], st[k]), (k, float((want[k] - st[k]).abs().max()))
        assert st["net_batch"] == want["net_batch"] and torch.equal(st["region_boxes"], want["region_boxes"])
        assert "network gradients" not in got["bytes"] and got["bytes"]["cfc prototypes"] > 0
    assert torch.equal(ranks[1]["state"]["S"], ranks[0]["state"]["S"])


def test_impossible_layouts_are_refused(mnist_data):
    cfg = build_config("mnist", 1, "smoke", 28, 28, net_width=8, form="batched")
    with pytest.raises(ValueError, match="at least one class"):
        Engine(cfg, mnist_data, comm=Comm(rank=0, world=11))
    cfg.match.form = "sequential"
    with pytest.raises(ValueError, match="batched form"):
        Engine(cfg, mnist_data, comm=Comm(rank=0, world=2))


# --- the CLI under torchrun ----------------------------------------------------------------------
SMOKE = ("--dataset", "fashionmnist", "--preset", "smoke", "--eval-runs", "0", "--no-progress", "--no-download")


def _torchrun(nproc, *flags, timeout=600):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "udd_fast.distill", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _images(out):
    return torch.load(out / "distilled.pt", weights_only=True)


@pytest.mark.integration
def test_torchrun_two_processes_match_one_and_resume(real_data_dir, tmp_path):
    flags = (*SMOKE, "--data-dir", str(real_data_dir), "--method", "udd", "--proxy-cache", str(tmp_path / "proxy"))
    one = subprocess.run([sys.executable, "-m", "udd_fast.distill", *flags, "--iterations", "4", "--out",
                          str(tmp_path / "one")], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    r = _torchrun(2, *flags, "--iterations", "2", "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_checkpoint(tmp_path / "two")["state"]["outer_done"] == 2
    r = _torchrun(2, "--resume", str(tmp_path / "two"), "--iterations", "4", "--data-dir", str(real_data_dir),
                  "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _images(tmp_path / "one"), _images(tmp_path / "two")
    # float32: the ranks' reordered gradient sums (see F64_TOL) round at ~6e-8 relative and the
    # difference grows through the network training; measured 1.5e-5 after 4 outer iterations
    diff = float((a["images"] - b["images"]).abs().max())
    print(f"1 process vs 2 ranks (float32, 4 outer iterations): max image difference {diff:.3g}")
    assert diff < 1e-4
    assert a["boxes"] is not None and torch.equal(a["boxes"], b["boxes"])
    s = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["resumed_from_outer"] == 2
    comm = s["communication"]
    assert comm["world_size"] == 2 and comm["inner_iterations"] == 2 * 2
    assert comm["payload_bytes_by_purpose"]["network gradients"] > 0
    # rank 0 alone wrote the artifacts: one log, no stray files
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        ["checkpoint.pt", "curves.png", "distilled.pt", "grid.png", "log.txt", "report.html", "summary.json"])


def _wait_for_checkpoint(out, procs, at_least=1, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(p.poll() is not None for p in procs):
            raise AssertionError("a rank ended early: " + " | ".join(p.stderr.read()[-2000:] for p in procs
                                                                     if p.poll() is not None))
        try:
            if load_checkpoint(out)["state"]["outer_done"] >= at_least:
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.integration
@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_lost_rank_stops_the_run_with_its_state_saved(real_data_dir, tmp_path, how):
    out = tmp_path / "run"
    flags = (*SMOKE, "--data-dir", str(real_data_dir), "--inner-loop", "1", "--iterations", "100000", "--out",
             str(out), "--dist-timeout", "10")
    procs = _launch([sys.executable, "-m", "udd_fast.distill", *flags], 2)
    try:
        _wait_for_checkpoint(out, procs, at_least=2)
        t0 = time.time()
        os.kill(procs[1].pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        _, err = procs[0].communicate(timeout=120)
        took = time.time() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    print(f"{how} rank: rank 0 stopped {took:.1f} s later")
    assert procs[0].returncode == 3, err[-3000:]
    assert took < 60  # "within a minute": a dead peer is seen at once, a hung one after --dist-timeout
    if how == "hung":
        assert took >= 5  # it waited for the peer, roughly the timeout
    assert "failed" in err and "--resume" in err and "rank" in err
    done = load_checkpoint(out)["state"]["outer_done"]
    assert done >= 2
    # the saved state resumes, here in one process
    r = subprocess.run([sys.executable, "-m", "udd_fast.distill", "--resume", str(out), "--iterations",
                        str(done + 1), "--data-dir", str(real_data_dir), "--no-progress"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_checkpoint(out)["state"]["outer_done"] == done + 1


@pytest.mark.integration
def test_torchrun_refuses_the_sequential_form(real_data_dir, tmp_path):
    r = _torchrun(2, *SMOKE, "--data-dir", str(real_data_dir), "--form", "sequential", "--out",
                  str(tmp_path / "x"))
    assert r.returncode != 0
    assert "batched form" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
def test_sigint_stops_every_rank_at_the_same_point_and_saves(real_data_dir, tmp_path):
    out = tmp_path / "run"
    flags = (*SMOKE, "--data-dir", str(real_data_dir), "--inner-loop", "1", "--iterations", "100000", "--out",
             str(out))
    procs = _launch([sys.executable, "-m", "udd_fast.distill", *flags], 2)
    try:
        _wait_for_checkpoint(out, procs, at_least=2)
        for p in procs:  # as a terminal's Ctrl-C reaches every process of the job
            p.send_signal(signal.SIGINT)
        results = _wait_all(procs, timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rc, _, err in results:
        assert rc == 130, err[-3000:]
        assert "--resume" in err
    st = load_checkpoint(out)["state"]
    assert st["outer_done"] >= 2
    assert torch.isfinite(st["S"]).all()


@pytest.mark.integration
def test_two_nodes_compute_what_one_node_does(real_data_dir, tmp_path):
    """Two torchrun agents (--nnodes 2, c10d rendezvous; each its node's local rank 0, which loads the
    data first) give bitwise the images of one agent with 2 processes."""
    flags = (*SMOKE, "--data-dir", str(real_data_dir))
    r = _torchrun(2, *flags, "--out", str(tmp_path / "one-node"))
    assert r.returncode == 0, r.stderr[-3000:]
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "udd-test",
           "-m", "udd_fast.distill", *flags, "--out", str(tmp_path / "two-nodes")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    agents = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    for rc, _, err in _wait_all(agents, timeout=600):
        assert rc == 0, err[-3000:]
    assert torch.equal(_images(tmp_path / "one-node")["images"], _images(tmp_path / "two-nodes")["images"])
