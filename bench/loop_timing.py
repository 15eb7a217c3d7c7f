"""Time per inner iteration of the distillation loop, in each mode the engine has, at CIFAR-10's
shapes (3x32x32, K=10, the paper preset's network update of 2000 images; --shape for Tiny-ImageNet's or
ImageNet's, with IDC's settings there) on random pixels: the loop's cost does not depend on what the
pixels show. With UDD_FAST_IDC_SRC set (on the CPU), IDC's
own loop (bench/idc_loop.py) is timed in the same run, side by side.

    python bench/loop_timing.py --device cpu --ipc 1 10 [--out loop.md]
    python bench/loop_timing.py --device cuda --ipc 1 10 50
    python bench/loop_timing.py --device cuda --shape imagenet10 --ipc 1 10 [--staged]
    python bench/loop_timing.py --device cpu --tiny          # what gpu_session.py --dry-run runs
    python bench/loop_timing.py --host --ipc 1 10 50        # the host's work per inner iteration (meta device)

One inner iteration = the matching step (all classes) + the network update; each is timed apart
(synchronized), after one warm-up inner iteration (which also compiles and captures), median over
--inner rounds in which every mode (and IDC's loop) runs one inner iteration in turn. The table gives
the FLOPs of one inner iteration (torch's FlopCounterMode: convolutions and matmuls) and the rate they
run at, against a float32 matmul measured in the same run; --profile adds where one inner iteration
goes, by kernel family (torch.profiler)."""
import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from udd_fast.config import build_config  # noqa: E402
from udd_fast.data import DATASETS, ArrayDataset, DatasetInfo, RealData  # noqa: E402
from udd_fast.engine import Engine  # noqa: E402

# (label, form, precision, --cuda-graphs, --compile): the modes timed on each device
MODES = {
    "cpu": [("sequential", "sequential", "fp32", "off", "off"), ("batched", "batched", "fp32", "off", "off"),
            ("batched, static", "batched", "fp32", "on", "off"),
            ("sequential, compiled", "sequential", "fp32", "off", "on"),
            ("batched, compiled", "batched", "fp32", "off", "on")],
    "cuda": [("sequential", "sequential", "tf32", "off", "off"), ("batched", "batched", "tf32", "off", "off"),
             ("batched, graphs", "batched", "tf32", "on", "off"),
             ("batched, graphs, bf16", "batched", "bf16", "on", "off"),
             ("batched, graphs, compiled", "batched", "tf32", "on", "on")],
}


def modes(device, tiny=False):
    """The modes timed on a device; a tiny (dry) run leaves out the compiled ones (their compile alone
    takes half a minute on 2 CPU cores)."""
    return [m for m in MODES[device] if not (tiny and m[4] == "on")]


# --shape: the data whose shapes are timed, and the training images made for it (the loop's cost does not
# depend on how many there are, only on the batches it draws)
SHAPES = {"cifar10": 50000, "tinyimagenet": 100000, "imagenet10": 13000, "imagenet100": 26000}


def random_set(n_train, size=None, k=None, seed=0, name="cifar10"):
    """Random uint8 pixels with the facts of the built-in `name` (its side and class count unless given;
    balanced labels): IDC's settings for that data then apply."""
    spec = DATASETS[name]
    size, k = size or spec["size"], k or spec["num_classes"]
    info = DatasetInfo(name=name, channels=3, size=size, num_classes=k, mean=spec["mean"], std=spec["std"],
                       class_names=tuple(str(c) for c in range(k)), size_base=spec["size_base"])
    rs = np.random.default_rng(seed)
    x = rs.integers(0, 256, (n_train, 3, size, size), dtype=np.uint8)
    y = np.arange(n_train, dtype=np.int64) % k
    return ArrayDataset(info, x, y, x[:k], y[:k])


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _distiller(data, ipc, form, precision, graphs, compile_net, device, **over):
    info = data.info
    cfg = build_config(info.name, ipc, "paper", info.size, info.size_base, num_classes=info.num_classes, device=device,
                       form=form, precision=precision,
                       cuda_graphs=graphs, compile=compile_net, **over)
    return Engine(cfg, data)


def our_steps(data, ipc, mode, device, **over):
    """Our loop in `mode` as a generator: each next() runs one inner iteration and yields (ms of the
    matching step, ms of the network update), synchronized. The static path of the batched form runs an
    inner iteration as one piece (replays of captured work): it yields (ms of the whole, None)."""
    _, form, precision, graphs, compile_net = mode
    d = _distiller(data, ipc, form, precision, graphs, compile_net, device, **over)
    whole = graphs == "on" and form == "batched"
    with d.precision():
        net, opt = d.start_network(0)
        d.boundary(0)
    i = 0
    while True:
        inner = i % d.cfg.match.inner_loop
        with d.precision():
            _sync(device)
            t0 = time.perf_counter()
            if whole:
                d.inner_iteration(net, opt, 0, inner)
            else:
                d.match(net, 0, inner)
            _sync(device)
            t1 = time.perf_counter()
            if not whole:
                d.network_update(net, opt)
            _sync(device)
            t2 = time.perf_counter()
        i += 1
        yield (t1 - t0) * 1e3, None if whole else (t2 - t1) * 1e3


class _HostWork(TorchDispatchMode):
    """Counts the aten ops dispatched outside Replay's calls (what the host launches itself, one by one)
    and the replays, and times the replays, so that the host time outside them can be told apart."""

    def __init__(self):
        super().__init__()
        self.ops, self.replays, self.inside_s, self.depth = 0, 0, 0.0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.depth:
            self.ops += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def watching(self, replay_cls):
        real = replay_cls.__call__

        def counted(replay):
            self.replays += 1
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return real(replay)
            finally:
                self.inside_s += time.perf_counter() - t0
                self.depth -= 1
        replay_cls.__call__ = counted
        try:
            with self:
                yield self
        finally:
            replay_cls.__call__ = real


def host_floor(ipc, inner=3):
    """(ops the host dispatches outside the replays, replays, host ms outside the replays) per inner
    iteration of the static path (--cuda-graphs on, batched form, compile off) at CIFAR-10's shapes and
    the paper's settings, on the meta device: shapes only, no device work, so what is timed is the host's.
    Meta kernels are partly Python (shape functions), so the time outside the replays is an upper bound
    of what the host spends launching there; the op count is exact."""
    from udd_fast.engine.replay import Replay
    data = RealData(random_set(50000), "meta")
    d = _distiller(data, ipc, "batched", "fp32", "on", "off", "cpu")
    step = getattr(d, "inner_iteration", None) or (lambda net, opt, o, i: (d.match(net, o, i),
                                                                          d.network_update(net, opt)))
    with d.precision():
        net, opt = d.start_network(0)
        d.boundary(0)
        step(net, opt, 0, 0)  # warm-up
        work = _HostWork()
        with work.watching(Replay):
            t0 = time.perf_counter()
            for i in range(1, inner + 1):
                step(net, opt, 0, i)
            total = time.perf_counter() - t0
    return work.ops / inner, work.replays / inner, (total - work.inside_s) / inner * 1e3


def interleaved(runners, inner):
    """{name: (median ms matching, median ms network update)}: one warm-up inner iteration each (it
    also compiles and captures), then `inner` rounds, each running one inner iteration of every
    runner in turn, so that a change of the machine's load falls on all of them alike."""
    for steps in runners.values():
        next(steps)
    times = {name: [] for name in runners}
    for _ in range(inner):
        for name, steps in runners.items():
            times[name].append(next(steps))
    return {name: (statistics.median(t[0] for t in ts), None if ts[0][1] is None else statistics.median(t[1] for t in ts))
            for name, ts in times.items()}


def flops_inner(data, ipc, form, device, **over):
    """(FLOPs of one matching step, of one network update): convolutions and matmuls, forward and backward."""
    d = _distiller(data, ipc, form, "fp32", "off", "off", device, **over)
    with d.precision():
        net, opt = d.start_network(0)
        d.boundary(0)
        with FlopCounterMode(display=False) as fm:
            d.match(net, 0, 0)
        with FlopCounterMode(display=False) as fu:
            d.network_update(net, opt)
    return fm.get_total_flops(), fu.get_total_flops()


FAMILIES = (  # (family, substrings of a kernel's or op's name), first match wins
    ("convolution", ("conv", "cudnn", "implicit", "xmma", "winograd", "im2col", "col2im")),
    ("matmul", ("gemm", "addmm", "aten::mm", "matmul", "cutlass", "bmm")),
    ("udd_fast ops", ("crop_resize", "diff_aug", "cfc", "response_map", "region_mask")),
    ("inductor / triton", ("triton", "cpp_fused", "inductor")),
    ("normalization", ("group_norm", "groupnorm", "native_group", "norm")),
    ("reduction", ("reduce", "sum", "mean", "argsort", "sort")),
    ("memory", ("memcpy", "memset", "copy", "cat", "fill")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "aten::")),
)


def family(name: str) -> str:
    low = name.lower()
    return next((f for f, keys in FAMILIES if any(k in low for k in keys)), "other")


def profile_breakdown(data, ipc, mode, device, **over):
    """Markdown lines: one inner iteration of `mode` under torch.profiler: its wall ms against the busy ms
    (the CUDA kernels' device time on a GPU, the operators' self CPU time on the CPU) and the kernel
    launches (CUDA kernels; on the CPU, aten operators): host-bound time is wall minus busy. Then where
    the busy time goes, by kernel family."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    cuda = device == "cuda"
    steps = our_steps(data, ipc, mode, device, **over)
    next(steps)  # warm-up: compiles and captures
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        m, u = next(steps)
    totals, launches = {}, 0
    for e in prof.key_averages():
        t = e.self_device_time_total if cuda else e.self_cpu_time_total
        if t > 0:
            totals[family(e.key)] = totals.get(family(e.key), 0.0) + t / 1e3
        if (e.device_type == DeviceType.CUDA) if cuda else e.key.startswith("aten::"):
            launches += e.count
    busy = sum(totals.values())
    total = busy or 1.0
    what = "CUDA kernels" if cuda else "CPU operators, self time"
    lines = [f"### One inner iteration under the profiler: IPC {ipc}, {mode[0]}, {mode[2]} ({what}; torch.profiler)",
             "", f"wall {m + (u or 0.0):.1f} ms, busy {busy:.1f} ms, {launches} kernel launches "
             f"({'CUDA kernels' if cuda else 'aten operators'})", "",
             "| kernel family | ms | share |", "|---|---|---|"]
    lines += [f"| {f} | {ms:.2f} | {ms / total:.0%} |" for f, ms in sorted(totals.items(), key=lambda kv: -kv[1])]
    return lines


def matmul_rate(device, n=2048, reps=5):
    """float32 GFLOP/s of an n x n matmul (median of reps)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def idc_runner(ipc, n_data):
    """IDC's own loop on the CPU (bench/idc_loop.py) as a runner in ms, or None without UDD_FAST_IDC_SRC."""
    src = os.environ.get("UDD_FAST_IDC_SRC")
    if not src or not Path(src).exists():
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import idc_loop
    return ((m * 1e3, u * 1e3) for m, u in idc_loop.idc_steps(idc_loop.load_idc(src), ipc, n_data))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--inner", type=int, default=5, help="timed inner iterations per mode (after one warm-up)")
    p.add_argument("--shape", default="cifar10", choices=tuple(SHAPES),
                   help="whose shapes and IDC settings to time (default CIFAR-10's; tinyimagenet: 200 classes at 64 px, "
                        "ConvNet-4; imagenet10/100: 224 px, ResNetAP-10)")
    p.add_argument("--tiny", action="store_true", help="16 px, 3 classes, IPC 1, small batches (a CPU dry run)")
    p.add_argument("--profile", action="store_true", help="also break one inner iteration of the device's first "
                                                           "batched mode down by kernel family (torch.profiler)")
    p.add_argument("--host", action="store_true", help="instead: what the host does per inner iteration of the "
                                                        "static path on the meta device (ops outside the replays, "
                                                        "replays, host ms outside them), no device work")
    p.add_argument("--staged", action="store_true",
                   help="also time each static mode with the training images left in host memory (--real-on-device "
                        "off: each inner iteration's images gathered on the host and copied over one ahead)")
    p.add_argument("--static-only", action="store_true", help="time the static modes only (with --staged: what "
                                                                  "staging costs, side by side)")
    p.add_argument("--classes", type=int, default=None, help="fewer classes than the shape's (a CPU measurement)")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    if args.host:
        lines = ["## The host's work per inner iteration, static path, CIFAR-10 paper shapes, meta device", "",
                 "| IPC | ops dispatched outside the replays | replays | host ms outside the replays (meta) |",
                 "|---|---|---|---|"]
        for ipc in args.ipc:
            ops, replays, ms = host_floor(ipc)
            lines.append(f"| {ipc} | {ops:.0f} | {replays:.1f} | {ms:.2f} |")
            print(lines[-1], flush=True)
        lines += ["", f"torch {torch.__version__}; meta kernels are partly Python: the ms are an upper bound."]
        text = "\n".join(lines)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("loop_timing.py --device cuda needs a CUDA device")
    if args.tiny:
        ds, ipcs, over, inner = random_set(60, size=16, k=3, name=args.shape), [1], \
            dict(batch_real=4, n_data=8, net_width=16), 1
    else:
        k = args.classes or DATASETS[args.shape]["num_classes"]
        ds, ipcs, over, inner = random_set(SHAPES[args.shape] * k // DATASETS[args.shape]["num_classes"], k=k,
                                           name=args.shape), args.ipc, {}, args.inner
    data = RealData(ds, args.device, "on")
    staged = RealData(ds, args.device, "off") if args.staged else None
    info = data.info
    n_data = over.get("n_data") or build_config(info.name, 1, "paper", info.size, info.size_base,
                                                num_classes=info.num_classes).net.n_data
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    rate = matmul_rate(args.device)
    lines = [f"## Loop time per inner iteration on {where} (median of {inner}, ms; {data.info.num_classes} classes, "
             f"{data.info.size} px, network update of {n_data} images)", "",
             "| IPC | mode | precision | matching | network update | inner iteration | matching share | "
             "GFLOP | GFLOP/s |", "|---|---|---|---|---|---|---|---|---|"]

    def row(ipc, label, precision, m, u, flops):
        total = m + (u or 0.0)
        gflop = (flops[0] + flops[1]) / 1e9 if flops else float("nan")
        parts = f"{m:.1f} | {u:.1f} | {total:.1f} | {m / total:.0%}" if u is not None else \
            f"(one piece) | (one piece) | {total:.1f} | -"
        lines.append(f"| {ipc} | {label} | {precision} | {parts} | {gflop:.1f} | {gflop / total * 1e3:.0f} |")
        print(lines[-1], flush=True)

    for ipc in ipcs:
        # FlopCounterMode counts a grouped convolution's weight gradient as if ungrouped (K times too
        # much for the batched form), so every row gets the sequential form's count: the same work
        flops = flops_inner(data, ipc, "sequential", args.device, **over)
        runners = {}
        if args.device == "cpu" and not args.tiny and args.shape == "cifar10":
            idc = idc_runner(ipc, n_data)
            if idc is None:
                lines.append(f"| {ipc} | IDC's code | fp32 | skipped: UDD_FAST_IDC_SRC is not set | | | | | |")
            else:
                runners["IDC's code", "fp32"] = idc
        for mode in modes(args.device, args.tiny):
            if args.static_only and mode[3] != "on":
                continue
            runners[mode[0], mode[2]] = our_steps(data, ipc, mode, args.device, **over)
            if staged is not None and mode[1] == "batched" and mode[3] == "on":
                runners[mode[0] + ", staged from host memory", mode[2]] = our_steps(staged, ipc, mode, args.device,
                                                                                     **over)
        for (label, precision), (m, u) in interleaved(runners, inner).items():
            row(ipc, label, precision, m, u, flops)
        if args.profile:
            batched = next(m for m in modes(args.device, args.tiny) if m[1] == "batched" and m[3] == "on")
            lines += [""] + profile_breakdown(data, ipc, batched, args.device, **over) + [""]
    lines += ["", f"float32 matmul (2048 x 2048) in the same run: {rate:.0f} GFLOP/s. FLOPs: convolutions and "
              f"matmuls of one inner iteration (FlopCounterMode, of the sequential form for every row: IDC's code and the "
              f"batched form do the same work). torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {where}."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
