"""1 process vs N processes of the distributed distillation, on this machine's CPU (gloo) or GPUs (NCCL).

    python bench/dist_scaling.py --dataset cifar10 --data-dir DIR [--method idc] [--iterations 2]
        [--nproc 2] [--device cpu] [--out bench/dist_scaling]

Runs `python -m udd_fast.distill` (quick preset, no evaluation) as
  - 1 process with all threads (torch's default),
  - 1 process with OMP_NUM_THREADS = threads per rank,
  - torchrun with --nproc ranks (OMP_NUM_THREADS = cores / nproc each),
and prints seconds per inner iteration (the loop only, from summary.json), the payload bytes per inner
iteration that rank 0 handed to collectives, by purpose, and the largest difference between the
1-process and the N-rank distilled images beside the one between the two 1-process runs (the same
float32 rounding effect, from the thread count alone). Results go to <out>/scaling-<dataset>-<method>.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, env, out):
    t = time.time()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    s["wall_seconds"] = time.time() - t
    s["images"] = torch.load(out / "distilled.pt", weights_only=True)["images"]
    return s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--method", default="idc")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(REPO / "bench" / "dist_scaling"))
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    per_rank = max(1, cores // a.nproc)
    flags = ["--dataset", a.dataset, "--data-dir", a.data_dir, "--method", a.method, "--preset", "quick",
             "--iterations", str(a.iterations), "--eval-runs", "0", "--no-progress", "--no-download",
             "--device", a.device, "--force"]  # a rerun replaces the previous run's directories
    if a.method == "udd":
        flags += ["--proxy-cache", str(out / "proxy")]
    runs = {}
    configs = [("1 process", None, [sys.executable, "-m", "udd_fast.distill"]),
               (f"1 process, {per_rank} thread(s)", per_rank, [sys.executable, "-m", "udd_fast.distill"]),
               (f"{a.nproc} ranks x {per_rank} thread(s)", per_rank,
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}",
                 "-m", "udd_fast.distill"])]
    for i, (name, threads, cmd) in enumerate(configs):
        env = dict(os.environ)
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        run_dir = out / f"{a.dataset}-{a.method}-{i}"
        runs[name] = _run(cmd + flags + ["--out", str(run_dir)], env, run_dir)
        s = runs[name]
        inner = s["iterations"] * s["inner_loop"]
        print(f"{name:28s} {s['loop_seconds'] / inner:8.3f} s per inner iteration ({inner} inner iterations)",
              flush=True)
    names = list(runs)
    base, dist_run = runs[names[0]], runs[names[-1]]
    comm = dist_run.get("communication")  # absent with --nproc 1 (no collectives)
    diff = float((base["images"] - dist_run["images"]).abs().max())
    if comm:
        print(f"payload bytes per inner iteration (rank 0): {comm['payload_bytes_per_inner_iteration']:.0f}")
        for k, v in sorted(comm["payload_bytes_by_purpose"].items()):
            print(f"  {k:28s} {v / comm['inner_iterations']:14.0f} per inner, {comm['calls_by_purpose'][k]} calls")
    print(f"max |images(1 process) - images({a.nproc} ranks)| = {diff:.3g}")
    # float32 rounding alone (another thread count, so another summation order) moves the images as much
    threads_diff = float((base["images"] - runs[names[1]]["images"]).abs().max())
    print(f"max |images(1 process) - images(1 process, {per_rank} thread(s))| = {threads_diff:.3g}")
    record = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "cores": cores,
              "torch": torch.__version__, "device": a.device,
              "runs": {k: {"seconds_per_inner_iteration": v["loop_seconds"] / (v["iterations"] * v["inner_loop"]),
                           "wall_seconds": v["wall_seconds"]} for k, v in runs.items()},
              "communication": comm, "max_image_difference": diff,
              "max_image_difference_threads_only": threads_diff}
    (out / f"scaling-{a.dataset}-{a.method}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
