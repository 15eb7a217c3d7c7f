"""The whole GPU check as one command, for a lent GPU machine (one H100/H200, at most 7 minutes; the
loop's figures come first, so that a session cut short still has them):

    python bench/gpu_session.py --out DIR --data-dir MNIST_ROOT --quick     # on the GPU machine, first
    python bench/gpu_session.py --out DIR --data-dir MNIST_ROOT             # then the whole session
    python bench/gpu_session.py --out DIR --data-dir MNIST_ROOT --dry-run   # the same on the CPU, tiny

Stages, in order, each logged under DIR (at most 8 files, so the device tool brings all back):
  (first)    versions, GPU, nvcc                                   -> session.md, session.json
  build      the C++/CUDA extension built in place (sm_90 only, to save time; CI compiles sm_80 too)
                                                                   -> build.log
  loop       bench/loop_timing.py: time per inner iteration at CIFAR-10 shapes, IPC 1 and 10, eager,
             CUDA graphs, bf16 and compiled; a torch.profiler record of one inner iteration (wall ms
             against GPU-busy ms, kernel launches, by kernel family); the host's work per inner
             iteration (--host); the network update trained ahead, N = 1, 2, 4 (trajectory_timing.py);
             an evaluation's 5 runs one by one and grouped (eval_timing.py, on MNIST)  -> loop.log
  large      bench/loop_timing.py --shape tinyimagenet and imagenet10 --staged: the loop beyond 32 px, IPC 1, the
             static modes also with the training images staged from host memory  -> large.log
  gpu_check  bench/gpu_check.py: correctness, time vs eager, bytes vs a copy -> gpu_check.log
  engine     `--preset smoke` distill + evaluate of MNIST on CUDA, idc and udd -> engine.log
  tests      the CUDA test subset: every op test (triton and cuda backends on the GPU, half precision)
             and every engine-level test on the cuda device        -> tests.log
--quick runs the loop stage alone (at most 3 minutes; its build of the extension is skipped: the loop
runs on Triton and the references). The session keeps to --budget seconds (default 420, --quick 180):
a stage whose estimate no longer fits is skipped, saying so, and each stage's subprocess is stopped at
its cap. session.md (the summary table, stage by stage) and session.json are rewritten after every
stage, so a killed session still leaves what it did. Exit status 0 when every stage that ran passed.

--dry-run runs every stage on the CPU with tiny sizes (CI runs it: tests/repo/test_gpu_session.py):
the build stage checks the installed extensions instead of compiling, the tests stage collects
the subset instead of running it, the others run their tiny CPU variants. The caps and the default
budget are the GPU's: a dry run keeps to a --budget only when one is given, and its stages have no
cap (on a loaded CPU a tiny stage can take longer than the GPU's cap, which says nothing of either). How to take the
repository and MNIST to a GPU machine: bench/RESULTS.md, "The GPU session".
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# the CUDA test subset: every op test (each backend on CUDA tensors), and the engine-level tests' cases
# that need a GPU (marked gpu)
OP_TESTS = ["tests/ops/test_backends.py", "tests/ops/test_augment_imagenet.py"] + sorted(str(p.relative_to(REPO))
                                                   for p in (REPO / "tests" / "ops").glob("test_ops_*.py"))
ENGINE_TESTS = ["tests/engine/test_equivalence.py", "tests/engine/test_engine.py", "tests/engine/test_udd.py",
                "tests/engine/test_precision.py", "tests/cli/test_cli.py", "tests/cli/test_resume.py",
                "tests/engine/test_fast_loop.py", "tests/engine/test_staged.py"]


@dataclass
class Stage:
    name: str
    estimate: float  # seconds it usually takes on an H200 (the skip decision)
    cap: float  # seconds after which its subprocess is stopped
    log: str  # file under --out
    commands: list = field(default_factory=list)  # argv lists, run in order until one fails


def stages(args):
    """The plan: the same stages for a GPU and a dry run, with the dry run's tiny variants."""
    dry = args.dry_run
    dev = "cpu" if dry else "cuda"
    data = ["--data-dir", str(args.data_dir), "--no-download", "--no-progress", "--device", dev]
    tiny = ["--iterations", "1", "--inner-loop", "1", "--eval-runs", "1", "--eval-epochs", "1"] if dry else []
    work = Path(args.work)
    udd = ["--proxy-cache", str(work / "proxy")] + (["--proxy-epochs", "0.002"] if dry else [])
    engine = [[PY, "-m", "udd_fast.distill", "--dataset", "mnist", "--preset", "smoke", "--method", m, *data, *tiny,
               "--out", str(work / f"mnist-{m}"), *(udd if m == "udd" else [])] for m in ("idc", "udd")]
    engine.append([PY, "-m", "udd_fast.evaluate", str(work / "mnist-udd"), "--eval-runs", "1", "--eval-epochs", "2",
                   *data])
    if dry:
        build = [[PY, "setup.py", "--version"],
                 [PY, "-c", "from udd_fast import ops; print(ops.available_backends(reasons=True))"]]
        tests = [[PY, "-m", "pytest", "--collect-only", "-q", *OP_TESTS],
                 [PY, "-m", "pytest", "--collect-only", "-q", "-m", "gpu and not slow", *ENGINE_TESTS]]
    else:
        build = [[PY, "setup.py", "build_ext", "--inplace"],
                 [PY, "-c", "from udd_fast import ops; r = ops.available_backends(reasons=True); print(r); "
                            "import sys; sys.exit(0 if r['cuda'][0] and r['triton'][0] else 1)"]]
        tests = [[PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *OP_TESTS],
                 [PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu and not slow", *ENGINE_TESTS]]
    check = [PY, "bench/gpu_check.py", "--device", dev] + (["--tiny"] if dry else [])  # tables go to its log
    loop = [[PY, "bench/loop_timing.py", "--device", dev, "--profile"] + (["--tiny"] if dry else ["--ipc", "1", "10"]),
            [PY, "bench/loop_timing.py", "--host", "--ipc", "1"] + ([] if dry else ["10", "50"]),
            [PY, "bench/trajectory_timing.py", "--device", dev] + (["--tiny"] if dry else ["--ahead", "1", "2", "4",
                                                                                           "--compile", "off"]),
            # an evaluation's 5 runs trained one by one and grouped (--eval-group)
            [PY, "bench/eval_timing.py", "--device", dev, "--dataset", "mnist", "--data-dir", str(args.data_dir)]
            + (["--ipc", "1", "--epochs", "1", "--rounds", "1", "--test", "100"] if dry else
               ["--epochs", "30", "--rounds", "2"])]
    # beyond 32 px: Tiny-ImageNet's shapes (200 classes, 64 px, ConvNet-4) and ImageNet-10's (224 px, ResNetAP-10)
    large = [[PY, "bench/loop_timing.py", "--device", dev, "--shape", shape, "--staged"]
             + (["--tiny"] if dry else ["--ipc", "1", "--inner", "3"]) for shape in ("tinyimagenet", "imagenet10")]
    if args.quick:
        return [Stage("loop", 90, 170, "loop.log", loop)]
    return [Stage("build", 90, 150, "build.log", build),
            Stage("loop", 90, 150, "loop.log", loop),
            Stage("large", 80, 150, "large.log", large),
            Stage("gpu_check", 40, 60, "gpu_check.log", [check]),
            Stage("engine", 40, 60, "engine.log", engine),
            Stage("tests", 60, 120, "tests.log", tests)]


def environment(dry):
    """Versions and the device, as text."""
    lines = [f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs"]
    probe = ("import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, "
             "'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)\n"
             "try:\n import triton; print('triton', triton.__version__)\nexcept ImportError as e: print('triton missing', e)")
    for cmd in ([PY, "-c", probe], ["nvcc", "--version"], ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                                             "--format=csv,noheader"]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
            lines.append((r.stdout.strip().splitlines() or [r.stderr.strip()])[-1] if cmd[0] == "nvcc"
                         else (r.stdout or r.stderr).strip())
        except (OSError, subprocess.TimeoutExpired) as e:
            lines.append(f"{cmd[0]}: {e}")
    return lines


def run_stage(stage, out, remaining, env, capped=True):
    """(status, seconds, note). Runs the stage's commands in order, appending to its log; stopped at
    the stage's cap (or the remaining budget) when `capped`, else only at the remaining budget."""
    cap = min(stage.cap, remaining) if capped else remaining
    t0 = time.time()
    with open(out / stage.log, "a") as log:
        for cmd in stage.commands:
            left = cap - (time.time() - t0)
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            try:
                r = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   timeout=max(1, left) if left != float("inf") else None)
            except subprocess.TimeoutExpired:
                log.write(f"\n[stopped after {cap:.0f} s]\n")
                return "timeout", time.time() - t0, f"stopped at its cap of {cap:.0f} s"
            if r.returncode != 0:
                return "failed", time.time() - t0, f"exit {r.returncode}: {' '.join(cmd[1:4])}"
    return "ok", time.time() - t0, ""


def write_summary(out, meta, results):
    rows = ["| stage | status | seconds | note |", "|---|---|---|---|"]
    rows += [f"| {r['stage']} | {r['status']} | {r['seconds']:.1f} | {r['note']} |" for r in results]
    text = [f"# GPU session ({'dry run on the CPU' if meta['dry_run'] else 'GPU'}), {meta['date']}", ""]
    text += [f"- {line}" for line in meta["environment"]] + [""] + rows
    (out / "session.md").write_text("\n".join(text) + "\n")
    (out / "session.json").write_text(json.dumps({**meta, "stages": results}, indent=2) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="where session.md, session.json and the logs go (at most 8 files)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"),
                   help="a data directory holding MNIST/raw/*.gz (default ../shared/data)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole session (default 420 on a GPU, 180 with --quick; none for --dry-run)")
    p.add_argument("--work", default=None, help="scratch directory for the engine runs (default: under /tmp)")
    p.add_argument("--dry-run", action="store_true", help="on the CPU with tiny sizes (CI)")
    p.add_argument("--quick", action="store_true", help="the loop stage alone (the figures first; at most 3 minutes)")
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = float("inf") if args.dry_run else 180.0 if args.quick else 420.0
    t_start = time.time()
    out = Path(args.out)
    args.data_dir = str(Path(args.data_dir).resolve())
    if not (Path(args.data_dir) / "MNIST" / "raw").is_dir():
        print(f"error: --data-dir {args.data_dir} holds no MNIST/raw folder (the engine stage needs MNIST)",
              file=sys.stderr)
        return 2
    if not args.dry_run:
        import torch
        if not torch.cuda.is_available():
            print("error: no CUDA device: run with --dry-run on a CPU machine", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    import tempfile
    args.work = args.work or tempfile.mkdtemp(prefix="udd-gpu-session-")
    # the tests read their data from UDD_FAST_SHARED_DATA (a GPU machine has only what was carried)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1", UDD_FAST_SHARED_DATA=str(Path(args.data_dir).resolve()))
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"  # Triton's kernels on CPU tensors
    else:
        env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # the machine's own arch: half the build time
        env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": args.dry_run, "quick": args.quick,
            "budget_s": args.budget if args.budget != float("inf") else None,
            "environment": environment(args.dry_run)}
    results = []
    write_summary(out, meta, results)
    for stage in stages(args):
        remaining = args.budget - (time.time() - t_start)
        if remaining < stage.estimate:
            results.append({"stage": stage.name, "status": "skipped", "seconds": 0.0,
                            "note": f"would overrun: needs ~{stage.estimate:.0f} s, {max(0, remaining):.0f} s left"})
        else:
            status, secs, note = run_stage(stage, out, remaining, env, capped=not args.dry_run)
            results.append({"stage": stage.name, "status": status, "seconds": secs, "note": note})
        print(f"{stage.name}: {results[-1]['status']} ({results[-1]['seconds']:.1f} s) {results[-1]['note']}",
              flush=True)
        write_summary(out, meta, results)
    total = time.time() - t_start
    budget = f"of a {args.budget:.0f} s budget" if args.budget != float("inf") else "(no budget: a dry run)"
    print(f"session: {total:.0f} s {budget}; summary in {out / 'session.md'}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
