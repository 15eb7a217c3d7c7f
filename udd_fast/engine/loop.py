"""The distillation loop, top-down: outer iterations of (fresh network, boundary, inner iterations of
matching step + network update), over the engine's parts.

One inner iteration is device work only: its draws are made on the device by the keyed counter RNG
and nothing is read back (tests/engine/test_fast_loop.py). On the static path (--cuda-graphs,
--compile) its shapes are fixed as well and its draws are keyed from device counters: the batched form
runs it as at most two replays (engine/static_inner.py), network batches padded to the full batch and
masked. The outer boundary reads the device:
the clamp is followed by UDD's region search (which picks windows and counts policies on the host), the
matching loss is read for the log, the images are checked for NaN, and a stop request is polled
between inner iterations from a host flag (a collective under torchrun).
"""
import math
import time
from dataclasses import dataclass

import torch

from .. import rng
from ..config import Config
from ..decode import RegionViews, mix_init
from ..distributed import Comm
from ..logs import quiet
from ..models import make_model
from .feed import Feed
from .matcher import BatchedMatcher, SequentialMatcher
from .precision import autocast, precision_scope
from .region_state import RegionState
from .static_inner import StaticInner
from .synthetic import SyntheticSet
from .network_update import NetworkUpdate
from .trajectory import Trajectories, snapshot_bytes

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Stopped(KeyboardInterrupt):
    """A requested stop (SIGINT/SIGTERM) seen between inner iterations: the current outer iteration is
    abandoned; the state of the last outer boundary is what a checkpoint keeps."""


COMPILE_MIN_BATCHES = 2000  # --compile auto: the run's network-update batches that pay for the compile


def network_batches(cfg: Config) -> int:
    """About how many network-update batches the run trains (epoch ends add at most one per inner iteration)."""
    return cfg.match.iterations * cfg.match.inner_loop * -(-cfg.net.n_data // cfg.match.batch_real)


def static_path(cfg: Config, device: torch.device, distributed: bool = False):
    """(static buffers, CUDA-graph capture, compiled network update) for a run, the one place these
    are decided. --cuda-graphs auto: on with CUDA in one process. --compile auto: on for a CPU run in
    one process with at least COMPILE_MIN_BATCHES network batches (measured on a 2-core CPU: the
    compile takes 25-45 s and saves about 0.1 s per batch of 64; bench/RESULTS.md), off on CUDA until
    measured there. The static path also serves a compiled step (it wants fixed shapes); capture
    needs CUDA."""
    cuda = device.type == "cuda"
    graphs = cfg.match.cuda_graphs == "on" or (cfg.match.cuda_graphs == "auto" and cuda and not distributed)
    compiled = cfg.match.compile == "on" or (cfg.match.compile == "auto" and not cuda and not distributed
                                             and network_batches(cfg) >= COMPILE_MIN_BATCHES)
    return graphs or compiled, graphs and cuda, compiled


TRAJECTORY_AUTO_MAX = 4  # --trajectory-batch auto on CUDA: at most this many networks ahead
TRAJECTORY_MEMORY = 0.125  # ... whose snapshots take at most this share of the device's memory


def trajectory_problem(cfg: Config):
    """Why this run cannot train its networks ahead as --trajectory-batch asks, or None: only ConvNets are
    grouped (ConvNet.forward_stacked), and not with --early."""
    n, arch = cfg.match.trajectory_batch, cfg.net.net_arch or "convnet"
    if n in ("auto", "1") or (arch == "convnet" and not cfg.net.early):
        return None
    return (f"--trajectory-batch {n} trains ConvNets ahead as one grouped model, without --early; this run has "
            f"--net-arch {arch} and --early {cfg.net.early}: use --trajectory-batch 1 (or auto)")


def trajectory_batch(cfg: Config, device: torch.device, snapshot, distributed: bool = False) -> int:
    """How many outer iterations' networks are trained ahead together (--trajectory-batch), the one
    place this is decided; `snapshot()` gives one outer iteration's snapshot bytes (called only where
    auto needs it: it makes a network). auto: 1 on the CPU and
    under torchrun (measured on a 2-core CPU: grouped training is no faster there, bench/RESULTS.md); on
    CUDA the most, up to TRAJECTORY_AUTO_MAX, whose snapshots fit TRAJECTORY_MEMORY of the device. Only
    ConvNets are grouped (ConvNet.forward_stacked), and not with --early (1 then)."""
    grouped_ok = (cfg.net.net_arch or "convnet") == "convnet" and not cfg.net.early
    if cfg.match.trajectory_batch != "auto":
        problem = trajectory_problem(cfg)
        if problem:
            raise ValueError(problem)
        return int(cfg.match.trajectory_batch)
    if device.type != "cuda" or distributed or not grouped_ok:
        return 1
    free = torch.cuda.get_device_properties(device).total_memory * TRAJECTORY_MEMORY
    return max(1, min(TRAJECTORY_AUTO_MAX, cfg.match.iterations, int(free // max(1, snapshot()))))


@dataclass
class Report:
    """Where the engine stands, as a caller sees it (Engine.report)."""
    outer_done: int  # outer iterations completed
    last_loss: float  # the last outer iteration's mean matching loss (NaN before the first)
    images: torch.Tensor  # the stored images as saved: clamped to [0, 1], float32
    labels: torch.Tensor
    region_views: RegionViews  # UDD's region views in use, or None
    mue: float  # mUE of the images as the loop holds them (unclamped), when asked for; else None
    policy_counts: dict  # how often each region policy chose ({"response": n, "jitter": n})
    policy_share: dict  # the same as shares of all choices
    loop: str  # the loop's form, precision and path, for the log


class Engine:
    """The run's state and loop over its parts: the synthetic set (`syn`), UDD's regions (`region_state`,
    with a proxy), the matcher of the configured form and the network update. `iterate()` performs the
    outer iterations. A caller that drives a run reads it through `state()`/`load_state()`,
    `iterate()`, `report()` and `mue()`; the other members are the parts, for tests and benchmarks.

    `trace`, if set, is called as trace(event, outer, inner, cls, rows) with event 'grad' (rows = the
    class's stored images at which its gradient is taken) or 'boundary' (rows = all of S right after
    the clamp of an outer iteration); tests use it to compare the forms.

    Distributed (`comm` with several ranks, batched form, plain path): this rank owns classes [c0, c1):
    it takes their gradients, moves their rows of S, searches their regions; CFC prototypes are merged
    across ranks; the network update is data-parallel. S, the momentum, the split step's remainder and
    the boxes are merged at the end of every outer iteration, so between outer iterations every rank
    holds the whole state.
    """

    def __init__(self, cfg: Config, data, log=quiet, trace=None, proxy=None, comm: Comm = None):
        if cfg.match.form not in ("batched", "sequential"):
            raise ValueError(f"unknown form {cfg.match.form!r} (batched or sequential)")
        self.comm = comm or Comm()
        if self.comm.distributed and cfg.match.form != "batched":
            raise ValueError("a distributed run uses the batched form (the sequential form is one process's loop)")
        udd = cfg.run.method == "udd"
        if udd and proxy is None and cfg.udd.policy != "none":
            raise ValueError("method udd with a region policy needs a proxy network")
        self.cfg, self.data, self.trace = cfg, data, trace
        self.log = log
        self.dtype = DTYPES[cfg.match.dtype]
        self.device = data.device
        info = data.info
        self.K = info.num_classes
        c0, c1 = self.comm.classes(self.K)
        if c1 <= c0:
            raise ValueError(f"{self.comm.world} ranks for {self.K} classes: every rank needs at least one class")
        static, capture, compiled = self.path = static_path(cfg, self.device, self.comm.distributed)
        if static and self.comm.distributed:
            raise ValueError("--cuda-graphs on and --compile on run in one process (the network update's gradients "
                             "are all-reduced per batch under torchrun)")
        self.mean, self.std = data.mean.to(self.dtype), data.std.to(self.dtype)
        self.amp = lambda: autocast(self.device, cfg.match.precision)
        self.syn = SyntheticSet(self.initial_images(), self.K, cfg.run.ipc, cfg.match.factor, cfg.match.mom_img,
                                cfg.match.lr_img, (c0, c1), cfg.match.decode_type or "single", cfg.match.batch_syn_max)
        self.proxy = None if proxy is None else proxy.to(self.device, self.dtype).eval()
        self.region_state = None
        if udd and self.proxy is not None:
            self.region_state = RegionState(self.syn, self.proxy, cfg.udd, cfg.match.factor, cfg.run.seed, self.mean,
                                            self.std, (c0, c1), self.comm)
        self.net_update = NetworkUpdate(cfg, data, self.dtype, self.mean, self.std, self.amp, self.comm, static,
                                        compiled)
        parts = (cfg, data, self.syn, self.region_state, self.dtype, self.mean, self.std, self.amp, self.comm,
                 (c0, c1))
        if cfg.match.form == "batched":
            self.matcher = BatchedMatcher(*parts, trace=trace, log=self.log)
        else:
            self.matcher = SequentialMatcher(*parts, trace=trace)
        self.static_inner = None  # the static path's inner iteration (made with the static network)
        self.n_ahead = trajectory_batch(cfg, self.device,
                                        lambda: snapshot_bytes(self.new_network(0), cfg.match.inner_loop),
                                        self.comm.distributed)
        self.trajectories = None  # the networks trained ahead (n_ahead > 1), made with the first group
        self.feed = Feed(self) if data.placement == "off" else None  # training images staged from host memory
        self.group = range(0)  # the outer iterations whose networks the trajectories hold
        self.reader = None  # the network matching reads, loaded from the trajectories' snapshots
        self.outer_done = 0
        self.last_loss = float("nan")

    # -- the state, as the rest of the package and a checkpoint see it ---------------------------------
    S = property(lambda self: self.syn.S)
    pending = property(lambda self: self.syn.pending, lambda self, v: setattr(self.syn, "pending", v))
    net_batch = property(lambda self: self.net_update.net_batch)
    policy_counts = property(lambda self: self.region_state.policy_counts if self.region_state else
                             {"response": 0, "jitter": 0})

    STATE_KEYS = ("S", "buf", "pending", "net_batch", "outer_done", "region_boxes", "policy_counts", "last_loss")

    def state(self):
        """Everything a resumed run needs, as a copy on the CPU. All randomness is keyed by (seed, outer,
        inner, class, purpose) and by net_batch, and the network is re-created per outer iteration from a
        keyed seed, so no generator state is needed beyond these counters."""
        def cp(t):
            return None if t is None else t.detach().to("cpu", copy=True)
        boxes = self.region_state.boxes if self.region_state else None
        return {"S": cp(self.syn.S), "buf": cp(self.syn.buf), "pending": cp(self.syn.pending),
                "net_batch": int(self.net_batch), "outer_done": int(self.outer_done), "region_boxes": cp(boxes),
                "policy_counts": dict(self.policy_counts), "last_loss": float(self.last_loss)}

    def load_state(self, st):
        """Restore a state() (raises ValueError when it does not fit this run's shapes)."""
        missing = [k for k in self.STATE_KEYS if k not in st]
        if missing:
            raise ValueError(f"state lacks {', '.join(missing)}")
        shape = self.syn.S.shape
        for k in ("S", "buf"):
            if not isinstance(st[k], torch.Tensor) or st[k].shape != shape:
                raise ValueError(f"{k} has shape {getattr(st[k], 'shape', None)}, this run needs {tuple(shape)}")
        for k, want in (("pending", shape), ("region_boxes", (self.K * self.syn.n_dec, 4))):
            if st[k] is not None and (not isinstance(st[k], torch.Tensor) or st[k].shape != want):
                raise ValueError(f"{k} has shape {getattr(st[k], 'shape', None)}, expected {tuple(want)}")
        searching = self.region_state is not None and self.region_state.search is not None
        if st["region_boxes"] is not None and not searching:
            raise ValueError("the state has region boxes but this run searches no regions")
        self.syn.load(st["S"], st["buf"], st["pending"])
        if self.region_state is not None:
            self.region_state.load(st["region_boxes"], st["policy_counts"])
        self.net_update.net_batch, self.outer_done = int(st["net_batch"]), int(st["outer_done"])
        self.last_loss = float(st["last_loss"])

    # -- pieces ---------------------------------------------------------------------------------------
    def initial_images(self):
        k2 = self.cfg.match.factor ** 2
        rows = [mix_init(self.data.first_of_class(c, self.cfg.run.ipc * k2), self.cfg.run.ipc, self.cfg.match.factor)
                for c in range(self.K)]
        return torch.cat(rows).to(self.dtype)

    def new_network(self, outer: int):
        """A fresh matching network (--net-arch: a ConvNet of depth by resolution, PyTorch's default init, or
        IDC's ResNetAP-10 and its init), drawn from a key of (seed, outer) on the CPU so every device and form
        starts from the same weights."""
        info = self.data.info
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng.key(self.cfg.run.seed, "net_init", outer) & 0x7FFF_FFFF_FFFF_FFFF)
            net = make_model(self.cfg.net.net_arch or "convnet", self.K, info.channels, info.size,
                             width=self.cfg.net.net_width)
        return net.to(self.device, self.dtype).train()

    def precision(self):
        """The context a run (or a benchmark of its steps) enters: TF32 per --precision, restored after."""
        return precision_scope(self.cfg.match.precision)

    def subsample_index(self, outer, inner):
        return self.matcher.subsample_index(outer, inner)

    def batched_grad(self, net, outer, inner):
        """(per-class matching loss, its gradient w.r.t. S) at the current S (batched form)."""
        return self.matcher.grad(net, **self.matcher.draws(outer, inner))

    def match(self, net, outer, inner):
        """One matching step of the configured form on S; returns the summed matching loss."""
        return self.matcher.step(net, outer, inner)

    def network_update(self, net, opt):
        self.net_update.update(net, opt)

    def start_network(self, outer):
        """The network (and optimizer, plain path) of an outer iteration. With networks trained ahead:
        the network matching reads, loaded from the snapshots per inner iteration, and no optimizer."""
        if self.n_ahead == 1:
            net, opt = self.net_update.start(self.new_network(outer))
            if self.cfg.net.early:  # IDC's --early: whole epochs of the real data before matching
                self.net_update.update(net, opt, self.cfg.net.early * int(self.data.images.shape[0]))
            return net, opt
        if outer not in self.group:
            self.start_group(outer)
        return self.reader, None

    def start_group(self, outer):
        """Trajectories of outer iterations outer .. outer+n_ahead-1 (as many as the run has), from where
        the network update stands now (net_batch at outer's start): each network's first batch number
        and its batches per inner iteration, counted on the host as the interleaved loop counts them."""
        cfg, nu = self.cfg, self.net_update
        self.group = range(outer, min(outer + self.n_ahead, cfg.match.iterations))
        nets = [self.new_network(o) for o in self.group]
        if self.trajectories is None:
            static, capture, compiled = self.path
            self.reader = self.new_network(outer)
            self.trajectories = Trajectories(self.reader, nu.padded(), self.n_ahead, cfg.match.inner_loop,
                                             cfg.net.n_data, self.amp, compiled, capture, self.log)
        firsts, counts, b = [], [], nu.net_batch
        for _ in self.group:
            firsts.append(b)
            counts.append([])
            for _ in range(cfg.match.inner_loop):
                numbers, b = nu.batches.run_until(b, cfg.net.n_data)
                counts[-1].append(len(numbers))
        self.trajectories.start(nets, firsts, counts)

    def inner_iteration(self, net, opt, outer, inner):
        """One inner iteration (the matching step, then the network update); returns its summed matching
        loss. On the static path with the batched form: at most two replays (engine/static_inner.py).
        With networks trained ahead: in a group's first outer iteration the group's update is trained
        (on CUDA, on its own stream), and matching reads this outer iteration's snapshot. Training images
        in host memory: read from what the feed staged for it (engine/feed.py)."""
        if self.feed is None:
            return self._inner_iteration(net, opt, outer, inner)
        with self.feed.iteration(outer, inner):
            return self._inner_iteration(net, opt, outer, inner)

    def _inner_iteration(self, net, opt, outer, inner):
        ahead = self.trajectories
        if ahead is not None and outer == self.group.start:
            ahead.record(inner)
            ahead.train(inner)
        if self.path[0] and self.cfg.match.form == "batched":
            if self.static_inner is None:
                self.static_inner = StaticInner(self.matcher, self.syn, self.net_update, self.cfg.match.inner_loop,
                                                self.cfg.net.n_data, self.path[1], self.log, ahead, self.reader)
            if inner == 0:
                self.static_inner.start(outer, outer - self.group.start)
            return self.static_inner.run(outer, inner)
        if ahead is not None:
            ahead.load(list(net.parameters()), outer - self.group.start, inner)
            loss = self.match(net, outer, inner)
            self.net_update.advance(self.cfg.net.n_data)
            return loss
        loss = self.match(net, outer, inner)
        self.network_update(net, opt)
        return loss

    # -- loop -----------------------------------------------------------------------------------------
    def boundary(self, outer):
        """Start of an outer iteration: clamp S to [0,1] (IDC), (UDD) search regions on the clamped
        S, then the rest of a split step."""
        self.syn.clamp()
        if self.trace:
            self.trace("boundary", outer, -1, -1, self.syn.S.clone())
        if self.region_state is not None and self.region_state.due(outer):
            self.region_state.search_regions(outer)
        self.syn.finish_split_step()

    def outer_step(self, outer, should_stop=None):
        cfg = self.cfg
        net, opt = self.start_network(outer)
        self.boundary(outer)
        loss_sum = 0.0
        for inner in range(cfg.match.inner_loop):
            if should_stop and self.comm.any(should_stop(), "stop flag"):  # every rank stops at the same point
                raise Stopped(f"stopped in outer iteration {outer}")
            loss_sum = loss_sum + self.inner_iteration(net, opt, outer, inner)
        if self.comm.distributed:
            loss_sum = self.merge(loss_sum, net)
        self.last_loss = float(loss_sum) / (self.K * cfg.match.inner_loop)  # IDC's logged mean loss
        if not (math.isfinite(self.last_loss) and bool(torch.isfinite(self.syn.S).all())):
            raise FloatingPointError(f"the matching loss or the images became NaN/infinite in outer iteration "
                                     f"{outer} (loss {self.last_loss}); lower --lr-img")
        self.outer_done = outer + 1
        return self.last_loss

    def merge(self, loss_sum, net):
        """End of a distributed outer iteration: every rank's rows of S, of the momentum buffer, of the
        split step's remainder and of the region boxes assembled on every rank; the matching loss summed
        over ranks; the ranks' networks checked to be identical. Returns the global loss sum."""
        c, syn = self.comm, self.syn
        rows = syn.rows
        syn.S = c.merge_rows(syn.S, rows.start, rows.stop, "state: images")
        syn.buf = c.merge_rows(syn.buf, rows.start, rows.stop, "state: momentum")
        if syn.pending is not None:
            syn.pending = c.merge_rows(syn.pending, rows.start, rows.stop, "state: split step")
        rs = self.region_state
        if rs is not None and rs.boxes is not None:
            rs.boxes = c.merge_rows(rs.boxes, rs.frows.start, rs.frows.stop, "state: boxes")
        total = c.all_reduce(torch.as_tensor(loss_sum, dtype=torch.float64, device=self.device).reshape(1).clone(),
                             "matching loss")
        with torch.no_grad():
            p = torch.cat([q.detach().reshape(-1) for q in net.parameters()]).double()
            c.check_same(torch.stack([p.sum(), p.square().sum()]), "matching networks")
        return float(total)

    def iterate(self, on_outer=None, should_stop=None):
        """All outer iterations from where the run stands; on_outer(outer, loss, seconds) after each;
        returns the stored images. should_stop() is polled between inner iterations: when true, Stopped
        is raised and the run stands mid-outer-iteration (a caller that wants to resume keeps a state()
        of the last boundary)."""
        t0 = time.time()
        with self.precision():
            for outer in range(self.outer_done, self.cfg.match.iterations):
                loss = self.outer_step(outer, should_stop)
                if on_outer:
                    on_outer(outer, loss, time.time() - t0)
        return self.stored_images()

    def stored_images(self):
        """The distilled set as saved: stored images clamped to [0,1] (a stated deviation from IDC,
        which saves them unclamped; evaluation clamps anyway)."""
        return self.syn.S.detach().clamp(0.0, 1.0).float()

    def labels(self):
        return torch.arange(self.K, device=self.device).repeat_interleave(self.cfg.run.ipc)

    def report(self, mue: bool = False) -> Report:
        """Where the run stands (see Report); its mUE (a forward pass of the proxy) only when asked."""
        rs = self.region_state
        static, capture, compiled = self.path
        loop = (f"{self.cfg.match.form} form, {self.cfg.match.precision}, "
                + ("static buffers" + (" captured as CUDA graphs" if capture else " (no capture off CUDA)")
                   if static else "plain path") + (", compiled network update" if compiled else "")
                + (f", networks trained {self.n_ahead} outer iterations ahead" if self.n_ahead > 1 else ""))
        return Report(self.outer_done, self.last_loss, self.stored_images(), self.labels(), self.region_views(),
                      self.mue(self.S) if mue and rs is not None else None, dict(self.policy_counts),
                      rs.share() if rs is not None else {"response": 0.0, "jitter": 0.0}, loop)

    # -- UDD --------------------------------------------------------------------------------------------
    def mue(self, images) -> float:
        """mUE of stored images under the proxy (docs/method.md section 2)."""
        return self.region_state.mue(images)

    def region_views(self):
        """The region views in use (RegionViews), or None."""
        rs = self.region_state
        if rs is None or rs.boxes is None:
            return None
        return RegionViews(self.syn.dec_src.clone(), rs.boxes.clone())
