"""IDC distillation: multi-formation decode, mix init, outer/inner loops, conv-weight gradient
matching, network updates on real data (method sections 1, 4 and 5).

Two forms compute the same thing:
- `sequential`: IDC's loop, one class at a time, one momentum-SGD step on the whole image tensor
  per class;
- `batched`: all classes in one step. Per-class conv-weight gradients come from one grouped
  network pass; the K per-class SGD steps become one step with momentum mu**K and step multiplier
  (1 - mu**K) / (1 - mu), and the clamp at each outer boundary splits the last step as section 4
  prescribes, so every gradient is taken at the same image values as in the sequential form.
"""
import math
import time

import torch
import torch.nn.functional as F

from . import ops, rng
from .augment import Strategy, sample_params
from .config import Config
from .decode import decode_plan, mix_init
from .models import ConvNet
from .sampling import EpochBatches, class_batch_indices
from .train import make_sgd, normalize, train_step

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def match_distance(g_real, g_syn, metric: str, dims):
    """IDC's `dist` summed over the given dims ('mse': squared, 'l1': absolute differences)."""
    d = g_real - g_syn
    if metric == "mse":
        return d.pow(2).sum(dims)
    if metric == "l1":
        return d.abs().sum(dims)
    raise ValueError(f"unknown metric {metric!r} (mse or l1)")


class Distiller:
    """Holds the synthetic images S [K*ipc, C, H, W] (unclamped between boundaries, as IDC) and the
    state of the run; `run()` performs the outer iterations.

    `trace`, if set, is called as trace(event, outer, inner, cls, rows) with event 'grad' (rows =
    the class's stored images at which its gradient is taken) or 'boundary' (rows = all of S right
    after the clamp of an outer iteration); tests use it to compare the two forms.
    """

    def __init__(self, cfg: Config, data, log=None, trace=None):
        if cfg.form not in ("batched", "sequential"):
            raise ValueError(f"unknown form {cfg.form!r} (batched or sequential)")
        self.cfg, self.data, self.trace = cfg, data, trace
        self.log = log or (lambda msg: None)
        self.dtype = DTYPES[cfg.dtype]
        self.device = data.images.device
        info = data.info
        self.K, self.C, self.size = info.num_classes, info.channels, info.size
        self.mean = data.mean.to(self.dtype)
        self.std = data.std.to(self.dtype)
        self.match_strategy = Strategy.parse(cfg.match_aug)
        self.net_strategy = Strategy.parse(cfg.net_aug)
        self.n_dec = cfg.ipc * cfg.factor ** 2
        self.n_syn = min(self.n_dec, cfg.batch_syn_max)
        src, boxes = decode_plan(cfg.ipc, self.size, cfg.factor, self.device)
        # class-major plan over all of S: row c*n_dec + j decodes stored image c*ipc + src[j]
        cls = torch.arange(self.K, device=self.device).repeat_interleave(self.n_dec)
        self.dec_src = cls * cfg.ipc + src.repeat(self.K)
        self.dec_boxes = boxes.repeat(self.K, 1)
        self.net_batches = EpochBatches(data.images.shape[0], cfg.batch_real, cfg.seed, "net_batches", self.device)
        self.S = self.initial_images()
        self.buf = torch.zeros_like(self.S)
        self.pending = None  # batched form: the part of the last step that comes after the clamp
        self.net_batch = 0
        self.outer_done = 0
        self.last_loss = float("nan")

    # -- pieces -------------------------------------------------------------------------------
    def initial_images(self):
        k2 = self.cfg.factor ** 2
        rows = [mix_init(self.data.first_of_class(c, self.cfg.ipc * k2), self.cfg.ipc, self.cfg.factor)
                for c in range(self.K)]
        return torch.cat(rows).to(self.dtype)

    def new_network(self, outer: int):
        """A fresh ConvNet-3 with PyTorch's default init, drawn from a key of (seed, outer) on the CPU
        so every device and form starts from the same weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng.key(self.cfg.seed, "net_init", outer) & 0x7FFF_FFFF_FFFF_FFFF)
            net = ConvNet(self.K, self.C, self.size, width=self.cfg.net_width)
        return net.to(self.device, self.dtype).train()

    def decode(self, S, classes=None):
        """Decoded formations [len(classes) or K, n_dec, C, H, W] of S (differentiable)."""
        src, boxes = self.dec_src.view(self.K, -1), self.dec_boxes.view(self.K, self.n_dec, 4)
        if classes is not None:
            src, boxes = src[classes], boxes[classes]
        out = ops.crop_resize(S, src.reshape(-1), boxes.reshape(-1, 4), (self.size, self.size))
        return out.view(-1, self.n_dec, self.C, self.size, self.size)

    def subsample_index(self, outer, inner):
        """[K, n_syn] formations to keep per class (IDC: random subset when more than batch_syn_max)."""
        if self.n_dec <= self.n_syn:
            return None
        keys = rng.subkeys(rng.key(self.cfg.seed, "subsample", outer, inner), torch.arange(self.K, device=self.device))
        return rng.permutation(keys, self.n_dec)[:, :self.n_syn]

    def match_params(self, outer, inner):
        keys = rng.subkeys(rng.key(self.cfg.seed, "match_aug", outer, inner), torch.arange(self.K, device=self.device))
        return sample_params(keys, self.match_strategy, self.size)

    def real_batches(self, outer, inner):
        step = outer * self.cfg.inner_loop + inner
        idx = class_batch_indices(self.data.class_indices, self.data.class_counts, self.cfg.seed, step,
                                  self.cfg.batch_real)
        x = self.data.to_float(idx.reshape(-1)).to(self.dtype)
        return normalize(x, self.mean, self.std).view(self.K, self.cfg.batch_real, self.C, self.size, self.size)

    # -- matching -----------------------------------------------------------------------------
    def _class_loss(self, net, real, syn, params, c):
        """Matching loss of one class: real [B,...], syn [n,...] normalized, one siamese draw."""
        b = real.shape[0]
        x = ops.diff_augment(torch.cat([real, syn]), params[c:c + 1], self.match_strategy,
                             torch.zeros(b + syn.shape[0], dtype=torch.long, device=self.device))
        weights = net.conv_weights()
        y = torch.full((b,), c, dtype=torch.long, device=self.device)
        g_real = torch.autograd.grad(F.cross_entropy(net(x[:b]), y), weights)
        y = torch.full((syn.shape[0],), c, dtype=torch.long, device=self.device)
        g_syn = torch.autograd.grad(F.cross_entropy(net(x[b:]), y), weights, create_graph=True)
        return sum(match_distance(gr.detach(), gs, self.cfg.metric, None) for gr, gs in zip(g_real, g_syn))

    def match_sequential(self, net, outer, inner):
        mu, lr = self.cfg.mom_img, self.cfg.lr_img
        reals = self.real_batches(outer, inner)
        params = self.match_params(outer, inner)
        sub = self.subsample_index(outer, inner)
        total = 0.0
        ipc = self.cfg.ipc
        for c in range(self.K):
            S = self.S.detach().requires_grad_(True)
            syn = self.decode(S, [c])[0]
            if sub is not None:
                syn = syn[sub[c]]
            loss = self._class_loss(net, reals[c], normalize(syn, self.mean, self.std), params, c)
            (grad,) = torch.autograd.grad(loss, S)
            if self.trace:
                self.trace("grad", outer, inner, c, self.S[c * ipc:(c + 1) * ipc].clone())
            with torch.no_grad():
                self.buf.mul_(mu).add_(grad)
                self.S.sub_(lr * self.buf)
            total = total + loss.detach()
        return total

    def match_batched(self, net, outer, inner):
        cfg, K, ipc = self.cfg, self.K, self.cfg.ipc
        mu, lr = cfg.mom_img, cfg.lr_img
        reals = self.real_batches(outer, inner)
        params = self.match_params(outer, inner)
        sub = self.subsample_index(outer, inner)
        S = self.S.detach().requires_grad_(True)
        syn = self.decode(S)
        if sub is not None:
            syn = torch.gather(syn, 1, sub.view(K, -1, 1, 1, 1).expand(-1, -1, *syn.shape[2:]))
        syn = normalize(syn, self.mean, self.std)
        b, n = cfg.batch_real, syn.shape[1]
        cls = torch.arange(K, device=self.device)
        x_real = ops.diff_augment(reals.flatten(0, 1), params, self.match_strategy, cls.repeat_interleave(b))
        x_syn = ops.diff_augment(syn.flatten(0, 1), params, self.match_strategy, cls.repeat_interleave(n))
        weights = [w.detach().unsqueeze(0).repeat(K, *([1] * w.dim())).requires_grad_(True) for w in net.conv_weights()]

        def class_ce(x, m):
            logits = net.forward_grouped(x.view(K, m, *x.shape[1:]), weights)  # [K, m, classes]
            return F.cross_entropy(logits.flatten(0, 1), cls.repeat_interleave(m), reduction="sum") / m

        g_real = torch.autograd.grad(class_ce(x_real, b), weights)
        g_syn = torch.autograd.grad(class_ce(x_syn, n), weights, create_graph=True)
        per_class = sum(match_distance(gr.detach(), gs, cfg.metric, tuple(range(1, gr.dim())))
                        for gr, gs in zip(g_real, g_syn))  # [K]
        (grad,) = torch.autograd.grad(per_class.sum(), S)
        if self.trace:
            for c in range(K):
                self.trace("grad", outer, inner, c, self.S[c * ipc:(c + 1) * ipc].clone())
        m, L = mu ** K, (1 - mu ** K) / (1 - mu)
        with torch.no_grad():
            self.buf.mul_(m).add_(grad)
            if inner == cfg.inner_loop - 1:
                # up to the clamp, class c has had its own step and those of classes c+1..K-1
                w = torch.tensor([(1 - mu ** (K - c)) / (1 - mu) for c in range(K)], dtype=self.dtype,
                                 device=self.device).repeat_interleave(ipc).view(-1, 1, 1, 1)
                self.S.sub_(lr * w * self.buf)
                self.pending = lr * (L - w) * self.buf
            else:
                self.S.sub_(lr * L * self.buf)
        return per_class.detach().sum()

    # -- loop ---------------------------------------------------------------------------------
    def boundary(self, outer):
        """Start of an outer iteration: clamp S to [0,1] (IDC), then the rest of a split step."""
        with torch.no_grad():
            self.S.clamp_(0.0, 1.0)
            if self.trace:
                self.trace("boundary", outer, -1, -1, self.S.clone())
            if self.pending is not None:
                self.S.sub_(self.pending)
                self.pending = None

    def outer_step(self, outer):
        cfg = self.cfg
        net = self.new_network(outer)
        opt = make_sgd(net, cfg.lr_net, cfg.mom_net, cfg.wd_net)
        self.boundary(outer)
        match = self.match_batched if cfg.form == "batched" else self.match_sequential
        loss_sum = 0.0
        for inner in range(cfg.inner_loop):
            loss_sum = loss_sum + match(net, outer, inner)
            self.network_update(net, opt)
        self.last_loss = float(loss_sum) / (self.K * cfg.inner_loop)  # IDC's logged mean loss
        if not (math.isfinite(self.last_loss) and bool(torch.isfinite(self.S).all())):
            raise FloatingPointError(f"the matching loss or the images became NaN/infinite in outer iteration "
                                     f"{outer} (loss {self.last_loss}); lower --lr-img")
        self.outer_done = outer + 1
        return self.last_loss

    def network_update(self, net, opt):
        """Train the matching network on shuffled real batches until n_data images were seen."""
        numbers, self.net_batch = self.net_batches.run_until(self.net_batch, self.cfg.n_data)
        for b in numbers:
            idx = self.net_batches.indices(b)
            x = normalize(self.data.to_float(idx).to(self.dtype), self.mean, self.std)
            train_step(net, opt, x, self.data.labels[idx], self.net_strategy, self.cfg.net_cutmix,
                       rng.key(self.cfg.seed, "net_update", b))

    def run(self, progress=None):
        """All outer iterations from where the run stands; progress(outer, loss, seconds) after each."""
        t0 = time.time()
        for outer in range(self.outer_done, self.cfg.iterations):
            loss = self.outer_step(outer)
            if progress:
                progress(outer, loss, time.time() - t0)
        return self.result()

    def result(self):
        """The distilled set as saved: stored images clamped to [0,1] (a stated deviation from IDC,
        which saves them unclamped; evaluation clamps anyway)."""
        return self.S.detach().clamp(0.0, 1.0).float()

    def labels(self):
        return torch.arange(self.K, device=self.device).repeat_interleave(self.cfg.ipc)
