"""The matching network's update on real data (IDC: train on shuffled real batches until n_data images
were seen), in two forms that compute the same:

- plain: `train.train_step` per batch, with torch's SGD; the last batch of an epoch is smaller, as
  IDC's; under torchrun each rank computes its share of every batch and the gradients are summed;
- static (`StaticNetworkStep`): every batch padded to the full batch size, the padding masked out of the
  loss; the draws (indices, augmentation, CutMix's box as a mask, its partners and ratio) copied into
  buffers allocated once; the parameters and the momentum updated in place. Optionally compiled
  (`--compile on`) and captured as a CUDA graph (`--cuda-graphs`).
"""
import torch
import torch.nn.functional as F

from .. import ops, rng
from ..augment import NUM_PARAMS, Strategy
from ..logs import quiet
from ..sampling import EpochBatches
from ..train import augment_params, cutmix_box, cutmix_partners, make_sgd, normalize, train_step
from .replay import Replay


def sgd_(params, grads, momentum, lr: float, mom: float, wd: float):
    """torch.optim.SGD's step (weight decay, momentum without dampening), in place, as its foreach form
    computes it: at most 4 kernels for all the parameters, whatever their number. A zero momentum buffer
    gives the first step exactly as torch's clone of the first gradient does (mom * 0 + d == d). No host
    reads: the step may be captured as a CUDA graph."""
    d = torch._foreach_add(grads, params, alpha=wd) if wd else grads
    torch._foreach_mul_(momentum, mom)
    torch._foreach_add_(momentum, d)
    torch._foreach_add_(params, momentum, alpha=-lr)


class StaticNetworkStep:
    """One network-update batch as fixed device work: the same shapes and the same sequence of kernels
    for every batch, whatever its size and draws. `fill(b, n, idx)` writes batch b's draws into the
    buffers; `run()` computes the masked loss, its gradient and the SGD step of `net`, in place."""

    def __init__(self, net, data, batch: int, net_cfg, dtype, mean, std, amp, compile_net: bool, capture: bool,
                 log):
        self.net, self.data, self.B, self.dtype, self.mean, self.std, self.amp = \
            net, data, batch, dtype, mean, std, amp
        self.cfg = net_cfg
        self.size = data.info.size
        dev = data.images.device
        self.strategy = Strategy.parse(net_cfg.net_aug)
        self.params = list(net.parameters())
        self.momentum = [torch.zeros_like(p) for p in self.params]
        self.idx = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.weight = torch.zeros(batch, dtype=dtype, device=dev)  # 1/n on the batch's n images, 0 on padding
        self.aug = torch.zeros(batch, NUM_PARAMS, device=dev)
        self.mask = torch.zeros(1, 1, self.size, self.size, dtype=torch.bool, device=dev)  # CutMix's box
        self.perm = torch.arange(batch, device=dev)  # CutMix's partners
        self.ratio = torch.ones((), dtype=dtype, device=dev)  # CutMix's kept share (1: no mix)
        self.positions = torch.arange(batch, device=dev)
        self.loss_fn = torch.compile(self._loss, dynamic=False) if compile_net else self._loss
        self.replay = Replay(self._step, "network step", capture, log, restore=self.params + self.momentum)

    def reset(self, fresh):
        """Start an outer iteration from `fresh` (a new network): its parameters into the static ones,
        the momentum zeroed."""
        with torch.no_grad():
            for p, q in zip(self.params, fresh.parameters()):
                p.copy_(q)
            for buf in self.momentum:
                buf.zero_()

    @torch.no_grad()
    def fill(self, key: int, n: int, idx: torch.Tensor):
        """Batch draws into the buffers: n = the batch's size (host-known), idx [n] its images. Keyed as
        train_step keys them, so the first n rows are the ragged batch's."""
        B = self.B
        self.idx[:n].copy_(idx)
        self.idx[n:].zero_()
        self.weight.zero_()
        self.weight[:n].fill_(1.0 / n)
        if self.strategy != Strategy():
            self.aug.copy_(augment_params(self.strategy, rng.key(key, "aug"), self.positions, self.size))
        if self.cfg.net_cutmix:
            mix_key = rng.key(key, "cutmix")
            box = cutmix_box(mix_key, self.size, self.size)
            self.mask.zero_()
            if box is None:
                self.ratio.fill_(1.0)
            else:
                (x1, x2, y1, y2), ratio = box
                self.mask[:, :, x1:x2, y1:y2] = True
                self.perm.copy_(cutmix_partners(mix_key, n, self.idx.device, padded=B))
                self.ratio.fill_(ratio)

    def _loss(self, x, y, y_b, ratio, weight):
        with self.amp():
            out = self.net(x)
        out = out.to(self.dtype)
        ce = F.cross_entropy(out, y, reduction="none")
        if y_b is not None:
            ce = ce * ratio + F.cross_entropy(out, y_b, reduction="none") * (1.0 - ratio)
        return (ce * weight).sum()

    def _step(self):
        x = normalize(self.data.to_float(self.idx).to(self.dtype), self.mean, self.std)
        y = self.data.labels[self.idx]
        with torch.no_grad():
            if self.strategy != Strategy():
                x = ops.diff_augment(x, self.aug, self.strategy)
            y_b = None
            if self.cfg.net_cutmix:  # by mask: the same kernels whether this batch mixes or not
                x = torch.where(self.mask, x[self.perm], x)
                y_b = y[self.perm]
        loss = self.loss_fn(x, y, y_b, self.ratio, self.weight)
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            sgd_(self.params, grads, self.momentum, self.cfg.lr_net, self.cfg.mom_net, self.cfg.wd_net)
        return loss.detach()

    def run(self):
        return self.replay()


class NetworkUpdate:
    """The network update of each inner iteration; `net_batch` counts batches across the run (every
    batch's draws are keyed by its number)."""

    def __init__(self, cfg, data, dtype, mean, std, amp, comm, static=False, compile_net=False, capture=False,
                 log=quiet):
        self.bf16 = cfg.match.precision == "bf16"
        self.cfg, self.data, self.dtype, self.mean, self.std, self.amp, self.comm = \
            cfg, data, dtype, mean, std, amp, comm
        self.batches = EpochBatches(data.images.shape[0], cfg.match.batch_real, cfg.run.seed, "net_batches",
                                    data.images.device)
        self.strategy = Strategy.parse(cfg.net.net_aug)
        self.net_batch = 0
        self.static = None
        self.static_args = (static, compile_net, capture, log)

    def start(self, fresh):
        """The network and optimizer of an outer iteration from a fresh network: plain, that network and
        a new SGD; static, the static network (made from the first fresh one) reset to it."""
        static, compile_net, capture, log = self.static_args
        if not static:
            return fresh, make_sgd(fresh, self.cfg.net.lr_net, self.cfg.net.mom_net, self.cfg.net.wd_net)
        if self.static is None:
            self.static = StaticNetworkStep(fresh, self.data, self.cfg.match.batch_real, self.cfg.net, self.dtype,
                                        self.mean, self.std, self.amp, compile_net, capture, log)
        self.static.reset(fresh)
        return self.static.net, None

    def update(self, net, opt):
        """Train `net` on the next batches until n_data images were seen (the count is known on the host)."""
        numbers, self.net_batch = self.batches.run_until(self.net_batch, self.cfg.net.n_data)
        for b in numbers:
            key = rng.key(self.cfg.run.seed, "net_update", b)
            idx = self.batches.indices(b)
            if self.static is not None:
                self.static.fill(key, self.batches.size(b), idx)
                self.static.run()
                continue

            def load(pos, idx=idx):
                i = idx[pos]
                return normalize(self.data.to_float(i).to(self.dtype), self.mean, self.std), self.data.labels[i]
            part = self.comm.shard(idx.shape[0]) if self.comm.distributed else None
            model = _Autocast(net, self.amp) if self.bf16 else net
            train_step(model, opt, load, idx.shape[0], self.data.info.size, self.strategy,
                       self.cfg.net.net_cutmix, key, part, self.reduce_grads)

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
