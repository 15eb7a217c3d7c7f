"""The static path's inner iteration (--cuda-graphs, --compile) as at most two replays of fixed device
work, keyed from device counters so that nothing is copied in per inner iteration:

- A: the matching step of all classes, the image step (split at the clamp by a device flag on the last
  inner iteration), and the network batches that every inner iteration trains (the fewest any can);
- B: one more network batch, replayed when the host's count of this inner iteration's batches (IDC
  trains until n_data images were seen: one more when an epoch's smaller last batch falls inside) says so.

With networks trained ahead (engine/trajectory.py), A loads the network from its snapshot instead of
training it, and there is no B: the trajectories train the network updates.

The counters (outer, inner, the network batch number) live on the device and A and B advance them; the
host keeps the same numbers (it decides from them what to launch) and never reads the device's.
"""
import torch

from .replay import Replay


class StaticInner:
    """The inner iterations of one run on the static path: `start(outer)` at an outer boundary, then
    `run(outer, inner)` per inner iteration (returns its summed matching loss, a device scalar that
    the next replay overwrites)."""

    def __init__(self, matcher, syn, net_update, inner_loop: int, n_data: int, capture: bool, log,
                 trajectories=None, reader=None):
        self.matcher, self.syn, self.net_update = matcher, syn, net_update
        self.inner_loop, self.n_data = inner_loop, n_data
        self.trajectories = trajectories
        dev = syn.S.device
        self.outer_t = torch.zeros((), dtype=torch.int64, device=dev)
        self.inner_t = torch.zeros((), dtype=torch.int64, device=dev)
        self.slot_t = torch.zeros((), dtype=torch.int64, device=dev)  # the outer iteration's place in its group
        changed = [syn.S, syn.buf, syn.split_buffer(), self.inner_t]
        if trajectories is not None:
            self.net = reader
            self.a = Replay(self._a, "inner iteration", capture, log, restore=changed + list(reader.parameters()))
            return
        self.fewest = net_update.batches.fewest(n_data)
        step = net_update.static
        self.net = step.net
        self.a = Replay(self._a, "inner iteration", capture, log,
                        restore=changed + [*step.params, *step.momentum, net_update.counter])
        self.b = Replay(self._b, "network batch", capture, log, restore=[*step.params, *step.momentum,
                                                                          net_update.counter])

    def start(self, outer: int, slot: int = 0):
        self.outer_t.fill_(outer)
        self.inner_t.zero_()
        self.slot_t.fill_(slot)

    def _a(self):
        m = self.matcher
        if self.trajectories is not None:
            self.trajectories.load(list(self.net.parameters()), self.slot_t, self.inner_t)
        per_class, grad = m.grad(self.net, **m.draws(self.outer_t, self.inner_t))
        self.syn.step_classes(grad, self.inner_t == self.inner_loop - 1)
        if self.trajectories is None:
            self.net_update.static.batches(self.net_update.counter, self.fewest)
        with torch.no_grad():
            self.inner_t.add_(1)
        return per_class.sum()

    def _b(self):
        self.net_update.static.batches(self.net_update.counter, 1)

    def run(self, outer: int, inner: int):
        self.matcher.trace_all(outer, inner)
        loss = self.a()
        count = self.net_update.advance(self.n_data)  # the host's count of this inner iteration's batches
        if self.trajectories is None:
            for _ in range(count - self.fewest):
                self.b()
        if inner == self.inner_loop - 1:
            self.syn.pending = self.syn.split[1]
        return loss
