"""The matching networks trained ahead (--trajectory-batch N): the network that matching reads is
trained on real data only, with keyed draws, so the network of an outer iteration and its update at
every inner iteration depend on the seed, the real data and the batch number it starts from, never on
the synthetic set (docs/method.md section 4). The networks of N outer iterations are trained together
as one grouped model (ConvNet.forward_stacked: one grouped convolution per layer, batches of N x 64
instead of N runs of 64), each with its own initialization and its own keyed batches, and each one's
parameters are kept before every inner iteration's update: what matching reads there.

Memory: N x inner_loop snapshots of the network's parameters (`snapshot_bytes`): 128 MB per outer
iteration for CIFAR-10's ConvNet-3 (320,010 parameters x 100 inner iterations x 4 bytes).

Schedule: a group is made at the start of its first outer iteration. In that outer iteration each inner
iteration first keeps the snapshot it matches against, then trains the group's update of that inner
iteration, in lockstep: as many padded batches as the group's network that needs the most, a network
that has seen its n_data images masked out of the step (its own IDC rule, counted on the device). The
group's later outer iterations only read snapshots. On CUDA the training runs on its own stream, so it
overlaps the matching step of the same inner iteration.
"""
import contextlib

import torch

from .network_update import mixed_ce, sgd_
from .replay import Replay


def snapshot_bytes(net, inner_loop: int) -> int:
    """Bytes of one outer iteration's snapshots: the network's parameters at each inner iteration."""
    return inner_loop * sum(p.numel() * p.element_size() for p in net.parameters())


class Trajectories:
    """The networks of up to N outer iterations, trained together; `start(nets, first_batches, counts)`
    begins a group, `record(inner)` keeps inner iteration `inner`'s snapshot of every network,
    `train(inner)` trains their updates of that inner iteration, `load(params, slot, inner)` copies
    network `slot`'s snapshot into `params` (ints, or device counters on the static path)."""

    def __init__(self, template, draws, n_nets: int, inner_loop: int, n_data: int, amp, compile_net: bool,
                 capture: bool, log):
        self.net, self.draws, self.N, self.inner_loop, self.n_data, self.amp = \
            template, draws, n_nets, inner_loop, n_data, amp
        self.cfg, self.dtype = draws.cfg, draws.dtype
        dev = draws.positions.device
        shapes = [p.shape for p in template.parameters()]
        self.params = [torch.zeros(n_nets, *s, dtype=self.dtype, device=dev, requires_grad=True) for s in shapes]
        self.momentum = [torch.zeros(n_nets, *s, dtype=self.dtype, device=dev) for s in shapes]
        self.snaps = [torch.zeros(inner_loop, n_nets, *s, dtype=self.dtype, device=dev) for s in shapes]
        self.counter = torch.zeros(n_nets, dtype=torch.int64, device=dev)  # each network's next batch number
        self.seen = torch.zeros(n_nets, dtype=torch.int64, device=dev)  # its images seen in this update
        self.steps = []  # per inner iteration: the group's lockstep batches (the most any network needs)
        self.loss_fn = torch.compile(self._loss, dynamic=False) if compile_net else self._loss
        self.stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        self.step = Replay(self._step, "grouped network batch", capture, log,
                           restore=[*self.params, *self.momentum, self.counter, self.seen])

    def start(self, nets, first_batches, counts):
        """A group: nets[k] (fresh networks, at most N) starts from batch number first_batches[k] and
        trains counts[k][i] batches at inner iteration i (the host's count, IDC's rule). Slots past
        len(nets) train a copy of the last network, unread (a partial last group keeps the shapes)."""
        n = len(nets)
        pad = lambda xs: list(xs) + [xs[-1]] * (self.N - n)  # noqa: E731
        self.steps = [max(c[i] for c in counts) for i in range(self.inner_loop)]
        self.firsts, self.counts = list(first_batches), [list(c) for c in counts]
        with self._stream(), torch.no_grad():
            fresh = [list(net.parameters()) for net in pad(nets)]
            for i, (p, m) in enumerate(zip(self.params, self.momentum)):
                p.copy_(torch.stack([f[i] for f in fresh]))
                m.zero_()
            self.counter.copy_(torch.tensor(pad(first_batches), dtype=torch.int64), non_blocking=True)
        if self.stream is not None:  # the fresh networks' memory is the main stream's: freed after this
            torch.cuda.current_stream().wait_stream(self.stream)

    def batch_numbers(self, inner: int):
        """The batch numbers the group's networks draw at inner iteration `inner` (on the host): each one's
        next steps[inner] from where it stands, those a network that is done draws and masks out included."""
        return [first + sum(c[:inner]) + s for first, c in zip(self.firsts, self.counts)
                for s in range(self.steps[inner])]

    def record(self, inner: int):
        """Keep every network's parameters as they stand (before inner iteration `inner`'s update)."""
        with self._stream(), torch.no_grad():
            torch._foreach_copy_([s[inner] for s in self.snaps], self.params)
        if self.stream is not None:  # matching reads the snapshot next, on the main stream
            torch.cuda.current_stream().wait_stream(self.stream)

    def train(self, inner: int):
        """Inner iteration `inner`'s network update of every network of the group (on CUDA, overlapping
        the matching launched after it: it writes no snapshot)."""
        with self._stream(wait=False):
            with torch.no_grad():
                self.seen.zero_()
            for _ in range(self.steps[inner]):
                self.step()

    def load(self, params, slot, inner):
        """Network `slot`'s snapshot at inner iteration `inner` into `params`. Device counters (0-dim
        tensors) are read on the device: indexing by a 0-dim tensor would read it back (item)."""
        with torch.no_grad():
            if isinstance(inner, torch.Tensor):
                at = (inner * self.N + slot).view(1)
                src = [s.flatten(0, 1).index_select(0, at)[0] for s in self.snaps]
            else:
                src = [s[inner, slot] for s in self.snaps]
            torch._foreach_copy_(params, src)

    def _stream(self, wait=True):
        """The producer's stream (CUDA), after the main stream's work so far when `wait` (its reads of the
        snapshots this call writes)."""
        if self.stream is None:
            return contextlib.nullcontext()
        if wait:
            self.stream.wait_stream(torch.cuda.current_stream())
        return torch.cuda.stream(self.stream)

    def _loss(self, x, y, y_b, ratio, weight):
        with self.amp():
            out = self.net.forward_stacked(x, self.params)
        N, B = y.shape
        ce = mixed_ce(out.to(self.dtype).flatten(0, 1), y.flatten(), None if y_b is None else y_b.flatten(),
                      None if ratio is None else ratio.repeat_interleave(B))
        return (ce * weight.flatten()).sum()

    def _step(self):
        """One lockstep batch of every network: each draws its own padded batch from its own counter; a
        network that has seen n_data images in this update is masked out (weight 0, parameters and
        momentum kept)."""
        active = self.seen < self.n_data
        draws = []
        for k in range(self.N):
            b = self.counter[k]
            idx, sizes = self.draws.epochs.on_device(b, 1)
            draws.append((sizes[0], self.draws.inputs(self.draws.key(b), idx[0], sizes[0])))
        sizes = torch.stack([d[0] for d in draws])
        x, y, y_b, ratio, weight = (None if parts[0] is None else torch.stack(parts)
                                    for parts in zip(*(d[1] for d in draws)))
        loss = self.loss_fn(x, y, y_b, ratio, weight)
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            sgd_(self.params, grads, self.momentum, self.cfg.lr_net, self.cfg.mom_net, self.cfg.wd_net, active)
            self.counter.add_(active.long())
            self.seen.add_(torch.where(active, sizes, 0))
