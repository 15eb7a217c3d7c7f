"""The matching network's update on real data (IDC: train on shuffled real batches until n_data images
were seen), in two forms that compute the same:

- plain: `train.train_step` per batch, with torch's SGD; the last batch of an epoch is smaller, as
  IDC's; under torchrun each rank computes its share of every batch and the gradients are summed;
- static (`StaticNetworkStep`): every batch padded to the full batch size, the padding masked out of the
  loss; the draws (indices, augmentation, CutMix's box as a mask, its partners and ratio) made on the
  device from a device batch counter; the parameters and the momentum updated in place. Optionally
  compiled (`--compile on`); engine/static_inner.py captures it as part of a CUDA graph (`--cuda-graphs`).
"""
import torch
import torch.nn.functional as F

from .. import ops, rng
from ..augment import Strategy
from ..sampling import EpochBatches
from ..train import augment_params, cutmix_on_device, make_sgd, normalize, train_step


def sgd_(params, grads, momentum, lr: float, mom: float, wd: float, active=None):
    """torch.optim.SGD's step (weight decay, momentum without dampening), in place, as its foreach form
    computes it: at most 4 kernels for all the parameters, whatever their number. A zero momentum buffer
    gives the first step exactly as torch's clone of the first gradient does (mom * 0 + d == d). No host
    reads: the step may be captured as a CUDA graph. `active` [N] (bool, on the device), for parameters
    stacked over N networks: network k steps where active[k], else keeps its parameters and momentum
    (the same arithmetic, out of place, then kept where active)."""
    d = torch._foreach_add(grads, params, alpha=wd) if wd else grads
    if active is None:
        torch._foreach_mul_(momentum, mom)
        torch._foreach_add_(momentum, d)
        torch._foreach_add_(params, momentum, alpha=-lr)
        return
    new_mom = torch._foreach_mul(momentum, mom)
    torch._foreach_add_(new_mom, d)
    new = torch._foreach_add(params, new_mom, alpha=-lr)
    for p, m, q, n in zip(params, momentum, new, new_mom):
        a = active.view(-1, *([1] * (p.dim() - 1)))
        m.copy_(torch.where(a, n, m))
        p.copy_(torch.where(a, q, p))


class PaddedBatches:
    """The inputs of network-update batches padded to the full batch size, drawn on the device: for
    batch number b (a device scalar), its indices, size, augmentation and CutMix, keyed as train_step
    keys them, so the first n rows of a padded batch are the ragged batch's. Shared by the static step
    and the trajectories trained ahead (engine/trajectory.py)."""

    def __init__(self, data, epochs, seed: int, net_cfg, dtype, mean, std):
        self.data, self.epochs, self.cfg, self.dtype, self.mean, self.std = data, epochs, net_cfg, dtype, mean, std
        self.B, self.size = epochs.batch, data.info.size
        dev = data.device
        self.strategy = Strategy.parse(net_cfg.net_aug)
        self.prefix = rng.key_tensor(rng.key(seed, "net_update"), dev)  # key(seed, "net_update", b) = chain(prefix, b)
        self.positions = torch.arange(self.B, device=dev)

    def key(self, b):
        return rng.chain(self.prefix, b)

    @torch.no_grad()
    def inputs(self, key, idx, n):
        """(x [B, C, H, W] augmented and mixed, labels y, CutMix partners' labels y_b or None, kept ratio
        or None, row weights [B]: 1/n, 0 on padding) of the batch keyed `key` with indices idx [B] (0 past
        n) and size n (device scalars)."""
        weight = torch.where(self.positions < n, 1.0 / n.double(), 0.0).to(self.dtype)
        x = normalize(self.data.to_float(idx).to(self.dtype), self.mean, self.std)
        y = self.data.labels[idx]
        if self.strategy != Strategy():
            x = ops.diff_augment(x, augment_params(self.strategy, rng.key_on(key, "aug"), self.positions,
                                                   self.size), self.strategy)
        y_b, ratio = None, None
        if self.cfg.net_cutmix:  # by mask: the same kernels whether this batch mixes or not
            mask, perm, ratio = cutmix_on_device(rng.key_on(key, "cutmix"), n, self.size, self.size, self.B,
                                                 self.dtype, self.cfg.net_cutmix_p)
            x = torch.where(mask, x[perm], x)
            y_b = y[perm]
        return x, y, y_b, ratio, weight


def mixed_ce(out, y, y_b, ratio):
    """Per-row cross-entropy, CutMix's mix of the two labels' where y_b is given (IDC's loss)."""
    ce = F.cross_entropy(out, y, reduction="none")
    if y_b is not None:
        ce = ce * ratio + F.cross_entropy(out, y_b, reduction="none") * (1.0 - ratio)
    return ce


class StaticNetworkStep:
    """Network-update batches as fixed device work: the same shapes and the same sequence of kernels
    for every batch, whatever its size and draws. `batches(b0, count)` trains batches b0 .. b0+count-1
    of `net` in place, b0 a device counter that it advances: every draw is computed on the device from
    it (PaddedBatches)."""

    def __init__(self, net, draws: PaddedBatches, amp, compile_net: bool):
        self.net, self.draws, self.amp = net, draws, amp
        self.cfg, self.dtype = draws.cfg, draws.dtype
        self.params = list(net.parameters())
        self.momentum = [torch.zeros_like(p) for p in self.params]
        self.loss_fn = torch.compile(self._loss, dynamic=False) if compile_net else self._loss

    def reset(self, fresh):
        """Start an outer iteration from `fresh` (a new network): its parameters into the static ones,
        the momentum zeroed."""
        with torch.no_grad():
            for p, q in zip(self.params, fresh.parameters()):
                p.copy_(q)
            for buf in self.momentum:
                buf.zero_()

    def batches(self, b0: torch.Tensor, count: int):
        """Train `count` batches from device batch number b0 (a 0-dim int64 tensor), then advance it."""
        idx, sizes = self.draws.epochs.on_device(b0, count)
        for j in range(count):
            self._step(self.draws.key(b0 + j), idx[j], sizes[j])
        with torch.no_grad():
            b0.add_(count)

    def _loss(self, x, y, y_b, ratio, weight):
        with self.amp():
            out = self.net(x)
        return (mixed_ce(out.to(self.dtype), y, y_b, ratio) * weight).sum()

    def _step(self, key, idx, n):
        """One padded batch: idx [B] (0 past n), n its size (device scalars), key its key."""
        loss = self.loss_fn(*self.draws.inputs(key, idx, n))
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            sgd_(self.params, grads, self.momentum, self.cfg.lr_net, self.cfg.mom_net, self.cfg.wd_net)


class NetworkUpdate:
    """The network update of each inner iteration; `net_batch` counts batches across the run (every
    batch's draws are keyed by its number). The static path keeps the same number on the device
    (`counter`, advanced by its steps); setting `net_batch` sets both."""

    def __init__(self, cfg, data, dtype, mean, std, amp, comm, static=False, compile_net=False):
        self.bf16 = cfg.match.precision == "bf16"
        self.cfg, self.data, self.dtype, self.mean, self.std, self.amp, self.comm = \
            cfg, data, dtype, mean, std, amp, comm
        self.batches = EpochBatches(data.images.shape[0], cfg.match.batch_real, cfg.run.seed, "net_batches",
                                    data.device)
        self.strategy = Strategy.parse(cfg.net.net_aug)
        self.counter = torch.zeros((), dtype=torch.int64, device=data.device)
        self._net_batch = 0
        self.static = None
        self.static_args = (static, compile_net)

    @property
    def net_batch(self) -> int:
        return self._net_batch

    @net_batch.setter
    def net_batch(self, b: int):
        self._net_batch = int(b)
        self.counter.fill_(self._net_batch)

    def start(self, fresh):
        """The network and optimizer of an outer iteration from a fresh network: plain, that network and
        a new SGD; static, the static network (made from the first fresh one) reset to it."""
        static, compile_net = self.static_args
        if not static:
            return fresh, make_sgd(fresh, self.cfg.net.lr_net, self.cfg.net.mom_net, self.cfg.net.wd_net)
        if self.static is None:
            self.static = StaticNetworkStep(fresh, self.padded(), self.amp, compile_net)
        self.static.reset(fresh)
        return self.static.net, None

    def padded(self):
        """The padded, device-drawn form of this run's batches (PaddedBatches)."""
        return PaddedBatches(self.data, self.batches, self.cfg.run.seed, self.cfg.net, self.dtype, self.mean, self.std)

    def advance(self, n_images: int) -> int:
        """Count, on the host, the batches until n_images were seen from net_batch on, and move net_batch
        past them (the device counter is the steps' to move). Returns the count."""
        numbers, self._net_batch = self.batches.run_until(self._net_batch, n_images)
        return len(numbers)

    def update(self, net, opt, n_images: int = None):
        """Train `net` on the next batches until n_images (default n_data) images were seen (the count is
        known on the host)."""
        n_images = self.cfg.net.n_data if n_images is None else n_images
        if self.static is not None:
            self.static.batches(self.counter, self.advance(n_images))
            return
        numbers, self._net_batch = self.batches.run_until(self._net_batch, n_images)
        for b in numbers:
            key = rng.key(self.cfg.run.seed, "net_update", b)
            idx = self.batches.indices(b)

            def load(pos, idx=idx):
                i = idx[pos]
                return normalize(self.data.to_float(i).to(self.dtype), self.mean, self.std), self.data.labels[i]
            part = self.comm.shard(idx.shape[0]) if self.comm.distributed else None
            model = _Autocast(net, self.amp) if self.bf16 else net
            train_step(model, opt, load, idx.shape[0], self.data.info.size, self.strategy,
                       self.cfg.net.net_cutmix, key, part, self.reduce_grads, self.cfg.net.net_cutmix_p)

    def reduce_grads(self, model):
        """Sum the network's gradients over the ranks (one flat all-reduce per batch)."""
        params = list(model.parameters())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        self.comm.all_reduce(flat, "network gradients")
        at = 0
        for p in params:
            p.grad = flat[at:at + p.numel()].view_as(p)
            at += p.numel()


class _Autocast(torch.nn.Module):
    """The network with its forward pass under bf16 autocast and float32 output, for train_step."""

    def __init__(self, net, amp):
        super().__init__()
        self.net, self.amp = net, amp

    def forward(self, x):
        with self.amp():
            return self.net(x).float()
