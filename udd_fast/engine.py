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
import contextlib
import math
import time

import torch
import torch.nn.functional as F

from . import ops, rng
from .augment import Strategy, sample_params
from .cfc import prototypes_ref
from .config import Config
from .decode import decode_plan, mix_init
from .matching import match_distance
from .distributed import Comm
from .models import ConvNet
from .regions import RegionSearch, window_grid
from .sampling import EpochBatches, class_batch_indices
from .train import make_sgd, normalize, train_step

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Stopped(KeyboardInterrupt):
    """A requested stop (SIGINT/SIGTERM) seen between inner iterations: the current outer iteration is
    abandoned; the state of the last outer boundary is what a checkpoint keeps."""


def apply_precision(precision: str):
    """Process-wide matmul/convolution precision. fp32: no TF32 anywhere; tf32 and bf16: TF32 allowed
    for matmuls and convolutions (PyTorch's default for convolutions). bf16 additionally autocasts the
    network forward passes (Distiller.amp). No effect on the CPU."""
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


class _Autocast(torch.nn.Module):
    """The network with its forward pass under bf16 autocast and float32 output, for train_step."""

    def __init__(self, net, amp):
        super().__init__()
        self.net, self.amp = net, amp

    def forward(self, x):
        with self.amp():
            return self.net(x).float()


class Distiller:
    """Holds the synthetic images S [K*ipc, C, H, W] (unclamped between boundaries, as IDC) and the
    state of the run; `run()` performs the outer iterations.

    `trace`, if set, is called as trace(event, outer, inner, cls, rows) with event 'grad' (rows =
    the class's stored images at which its gradient is taken) or 'boundary' (rows = all of S right
    after the clamp of an outer iteration); tests use it to compare the two forms.

    UDD (cfg.run.method == 'udd', with a `proxy` network): regions are searched on the clamped S at
    every `region_every`-th outer boundary, their views join each class's synthetic batch, and the
    CFC loss is added with weight cfg.udd.cfc_weight.

    Distributed (`comm` with several ranks, batched form only): this rank owns classes [c0, c1): it
    takes their gradients, updates their rows of S (and of the momentum buffer), and searches their
    regions; CFC prototypes are merged across ranks; the network update is data-parallel (train_step
    on this rank's share of each batch). S, the buffers and the boxes are merged at the end of every
    outer iteration, so between outer iterations every rank holds the whole state (state(), result(),
    regions()).
    """

    def __init__(self, cfg: Config, data, log=None, trace=None, proxy=None, comm: Comm = None):
        if cfg.match.form not in ("batched", "sequential"):
            raise ValueError(f"unknown form {cfg.match.form!r} (batched or sequential)")
        self.comm = comm or Comm()
        if self.comm.distributed and cfg.match.form != "batched":
            raise ValueError("a distributed run uses the batched form (the sequential form is one process's loop)")
        udd = cfg.run.method == "udd"
        if udd and proxy is None and (cfg.udd.policy != "none"):
            raise ValueError("method udd with a region policy needs a proxy network")
        self.cfg, self.data, self.trace = cfg, data, trace
        self.log = log or (lambda msg: None)
        self.dtype = DTYPES[cfg.match.dtype]
        self.device = data.images.device
        info = data.info
        self.K, self.C, self.size = info.num_classes, info.channels, info.size
        self.c0, self.c1 = self.comm.classes(self.K)
        if self.c1 <= self.c0:
            raise ValueError(f"{self.comm.world} ranks for {self.K} classes: every rank needs at least one class")
        self.own = torch.arange(self.c0, self.c1, device=self.device)  # this rank's classes
        self.rows = slice(self.c0 * cfg.run.ipc, self.c1 * cfg.run.ipc)  # their stored images
        self.n_dec = cfg.run.ipc * cfg.match.factor ** 2
        self.frows = slice(self.c0 * self.n_dec, self.c1 * self.n_dec)  # their formations
        self.mean = data.mean.to(self.dtype)
        self.std = data.std.to(self.dtype)
        self.proxy = None if proxy is None else proxy.to(self.device, self.dtype).eval()
        self.match_strategy = Strategy.parse(cfg.match.match_aug)
        self.net_strategy = Strategy.parse(cfg.net.net_aug)
        self.search = None
        if udd and cfg.udd.policy != "none":
            u = cfg.udd
            self.search = RegionSearch(self.proxy, self.size, cfg.match.factor, u.region_size, u.policy, u.jitter_sigma,
                                       u.jitter_draws, cfg.run.seed)
        self.cfc_weight = cfg.udd.cfc_weight if udd else 0.0
        self.region_boxes = None  # [K*n_dec, 4] stored-coordinate box per formation, once searched
        self.policy_counts = {"response": 0, "jitter": 0}
        # formations, plus one region view per formation when regions are on
        self.n_total = self.n_dec * (2 if self.search else 1)
        self.n_syn = min(self.n_total, cfg.match.batch_syn_max)
        src, boxes = decode_plan(cfg.run.ipc, self.size, cfg.match.factor, self.device)
        # class-major plan over all of S: row c*n_dec + j decodes stored image c*ipc + src[j]
        cls = torch.arange(self.K, device=self.device).repeat_interleave(self.n_dec)
        self.dec_src = cls * cfg.run.ipc + src.repeat(self.K)
        self.dec_boxes = boxes.repeat(self.K, 1)
        self.net_batches = EpochBatches(data.images.shape[0], cfg.match.batch_real, cfg.run.seed, "net_batches",
                                        self.device)
        self.S = self.initial_images()
        self.buf = torch.zeros_like(self.S)
        self.pending = None  # batched form: the part of the last step that comes after the clamp
        self.net_batch = 0
        self.outer_done = 0
        self.last_loss = float("nan")
        apply_precision(cfg.match.precision)
        self.bf16 = cfg.match.precision == "bf16"

    def amp(self):
        """Context for network forward passes: bf16 autocast with --precision bf16. Images, losses,
        gradient distances and optimizer state stay in self.dtype."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # -- checkpoint state ---------------------------------------------------------------------
    STATE_KEYS = ("S", "buf", "pending", "net_batch", "outer_done", "region_boxes", "policy_counts", "last_loss")

    def state(self):
        """Everything a resumed run needs, as a copy on the CPU. All randomness is keyed by (seed, outer,
        inner, class, purpose) and by net_batch, and the network is re-created per outer iteration from a
        keyed seed, so no generator state is needed beyond these counters."""
        def cp(t):
            return None if t is None else t.detach().to("cpu", copy=True)
        return {"S": cp(self.S), "buf": cp(self.buf), "pending": cp(self.pending), "net_batch": int(self.net_batch),
                "outer_done": int(self.outer_done), "region_boxes": cp(self.region_boxes),
                "policy_counts": dict(self.policy_counts), "last_loss": float(self.last_loss)}

    def load_state(self, st):
        """Restore a state() (raises ValueError when it does not fit this run's shapes)."""
        missing = [k for k in self.STATE_KEYS if k not in st]
        if missing:
            raise ValueError(f"state lacks {', '.join(missing)}")
        for k in ("S", "buf"):
            if not isinstance(st[k], torch.Tensor) or st[k].shape != self.S.shape:
                raise ValueError(f"{k} has shape {getattr(st[k], 'shape', None)}, this run needs {tuple(self.S.shape)}")
        for k, shape in (("pending", self.S.shape), ("region_boxes", (self.K * self.n_dec, 4))):
            if st[k] is not None and (not isinstance(st[k], torch.Tensor) or st[k].shape != shape):
                raise ValueError(f"{k} has shape {getattr(st[k], 'shape', None)}, expected {tuple(shape)}")
        if st["region_boxes"] is not None and self.search is None:
            raise ValueError("the state has region boxes but this run searches no regions")

        def dev(t, dtype):
            return None if t is None else t.to(self.device, dtype)
        self.S, self.buf = dev(st["S"], self.dtype), dev(st["buf"], self.dtype)
        self.pending = dev(st["pending"], self.dtype)
        self.region_boxes = None if st["region_boxes"] is None else st["region_boxes"].to(self.device)
        self.net_batch, self.outer_done = int(st["net_batch"]), int(st["outer_done"])
        self.policy_counts = {k: int(v) for k, v in st["policy_counts"].items()}
        self.last_loss = float(st["last_loss"])

    # -- pieces -------------------------------------------------------------------------------
    def initial_images(self):
        k2 = self.cfg.match.factor ** 2
        rows = [mix_init(self.data.first_of_class(c, self.cfg.run.ipc * k2), self.cfg.run.ipc, self.cfg.match.factor)
                for c in range(self.K)]
        return torch.cat(rows).to(self.dtype)

    def new_network(self, outer: int):
        """A fresh ConvNet-3 with PyTorch's default init, drawn from a key of (seed, outer) on the CPU
        so every device and form starts from the same weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng.key(self.cfg.run.seed, "net_init", outer) & 0x7FFF_FFFF_FFFF_FFFF)
            net = ConvNet(self.K, self.C, self.size, width=self.cfg.net.net_width)
        return net.to(self.device, self.dtype).train()

    def decode(self, S, classes=None, views=True):
        """The synthetic batch before subsampling, [len(classes) or K, n, C, H, W] (differentiable):
        each class's formations, then (UDD) its region views in the same order."""
        src, boxes = self.dec_src.view(self.K, -1), self.dec_boxes.view(self.K, self.n_dec, 4)
        if views and self.region_boxes is not None:
            src = torch.cat([src, src], 1)
            boxes = torch.cat([boxes, self.region_boxes.view(self.K, self.n_dec, 4)], 1)
        if classes is not None:
            src, boxes = src[classes], boxes[classes]
        out = ops.crop_resize(S, src.reshape(-1), boxes.reshape(-1, 4), (self.size, self.size))
        return out.view(src.shape[0], src.shape[1], self.C, self.size, self.size)

    def subsample_index(self, outer, inner):
        """[own classes, n_syn] samples to keep per class (IDC: random subset when more than batch_syn_max)."""
        if self.n_total <= self.n_syn:
            return None
        keys = rng.subkeys(rng.key(self.cfg.run.seed, "subsample", outer, inner), self.own)
        return rng.permutation(keys, self.n_total)[:, :self.n_syn]

    # -- UDD ----------------------------------------------------------------------------------
    def formation_labels(self):
        return torch.arange(self.K, device=self.device).repeat_interleave(self.n_dec)

    def search_regions(self, outer):
        """Choose each (own) formation's underutilized window on S as it is now (clamped)."""
        x = self.decode(self.S.detach(), self.own, views=False).flatten(0, 1).clamp(0, 1)
        f = self.frows
        choice, used_jitter, _ = self.search.select(x, self.formation_labels()[f], self.mean, self.std,
                                                    rng.key(self.cfg.run.seed, "jitter", outer), first=f.start)
        if self.region_boxes is None:
            self.region_boxes = torch.zeros(self.K * self.n_dec, 4, dtype=torch.int64, device=self.device)
        self.region_boxes[f] = self.search.boxes(choice, self.dec_boxes[f, :2])
        counts = torch.stack([used_jitter.sum(), (~used_jitter).sum()]).to(torch.int64)
        n_jit, n_resp = self.comm.all_reduce(counts, "policy counts").tolist()
        self.policy_counts["jitter"] += n_jit
        self.policy_counts["response"] += n_resp

    def policy_share(self):
        total = sum(self.policy_counts.values())
        return {k: (v / total if total else 0.0) for k, v in self.policy_counts.items()}

    @torch.no_grad()
    def mue(self, images):
        """mUE of a stored set under the proxy: mean usage entropy of its formations' response maps."""
        x = self.decode(images.to(self.dtype), views=False).flatten(0, 1).clamp(0, 1)
        fmap = self.proxy.feature_map((x - self.mean) / self.std)
        tile = math.ceil(self.size / self.cfg.match.factor)  # the windows only shape the unused scores here
        _, _, ue = ops.response_map(fmap, self.proxy.classifier.weight, self.formation_labels(), tile,
                                    window_grid(tile, self.cfg.udd.region_size))
        return float(ue.mean())

    def match_params(self, outer, inner):
        """[own classes, P]: each class's siamese augmentation draw."""
        keys = rng.subkeys(rng.key(self.cfg.run.seed, "match_aug", outer, inner), self.own)
        return sample_params(keys, self.match_strategy, self.size)

    def real_batches(self, outer, inner):
        """[own classes, B, C, H, W] normalized real batches."""
        b = self.cfg.match.batch_real
        step = outer * self.cfg.match.inner_loop + inner
        idx = class_batch_indices(self.data.class_indices, self.data.class_counts, self.cfg.run.seed, step,
                                  b)[self.c0:self.c1]
        x = self.data.to_float(idx.reshape(-1)).to(self.dtype)
        return normalize(x, self.mean, self.std).view(idx.shape[0], b, self.C, self.size, self.size)

    # -- matching -----------------------------------------------------------------------------
    def augmented_reals(self, outer, inner, params):
        """[own classes, B, C, H, W]: class c's real batch under class c's (siamese) draw; the synthetic
        batch gets the same draw, so augmenting the two apart equals IDC's augmenting them together."""
        reals = self.real_batches(outer, inner)
        b = self.cfg.match.batch_real
        cls = torch.arange(reals.shape[0], device=self.device).repeat_interleave(b)
        return ops.diff_augment(reals.flatten(0, 1), params, self.match_strategy, cls).view(reals.shape)

    def _class_loss(self, net, x_real, syn, params, c, protos):
        """Loss of class c: gradient matching (+ CFC with prototypes) for augmented real x_real [B,...]
        and normalized, not yet augmented synthetic syn [n,...]."""
        n = syn.shape[0]
        x_syn = ops.diff_augment(syn, params[c:c + 1], self.match_strategy,
                                 torch.zeros(n, dtype=torch.long, device=self.device))
        weights = net.conv_weights()
        y = torch.full((x_real.shape[0],), c, dtype=torch.long, device=self.device)
        with self.amp():
            logits = net(x_real)
        g_real = torch.autograd.grad(F.cross_entropy(logits.to(self.dtype), y), weights)
        y = torch.full((n,), c, dtype=torch.long, device=self.device)
        with self.amp():
            feats = net.features(x_syn)
            logits = net.classifier(feats)
        feats = feats.to(self.dtype)
        g_syn = torch.autograd.grad(F.cross_entropy(logits.to(self.dtype), y), weights, create_graph=True)
        # the distance in the images' dtype, whatever precision the gradients were computed in
        loss = sum(match_distance(gr.detach().to(self.dtype), gs.to(self.dtype), self.cfg.match.metric, None)
                   for gr, gs in zip(g_real, g_syn))
        if self.cfc_weight:
            loss = loss + self.cfc_weight * ops.cfc_loss(feats, y, protos, self.cfg.udd.cfc_tau)
        return loss

    def match(self, net, outer, inner):
        """One matching step of the configured form on S; returns the summed matching loss."""
        if self.cfg.match.form == "batched":
            return self.match_batched(net, outer, inner)
        return self.match_sequential(net, outer, inner)

    def match_sequential(self, net, outer, inner):
        mu, lr = self.cfg.match.mom_img, self.cfg.match.lr_img
        params = self.match_params(outer, inner)
        x_real = self.augmented_reals(outer, inner, params)
        protos = None
        if self.cfc_weight:
            with torch.no_grad(), self.amp():
                protos = prototypes_ref(torch.stack([net.features(x_real[c]) for c in range(self.K)]).to(self.dtype))
        sub = self.subsample_index(outer, inner)
        total = 0.0
        ipc = self.cfg.run.ipc
        for c in range(self.K):
            S = self.S.detach().requires_grad_(True)
            syn = self.decode(S, [c])[0]
            if sub is not None:
                syn = syn[sub[c]]
            loss = self._class_loss(net, x_real[c], normalize(syn, self.mean, self.std), params, c, protos)
            (grad,) = torch.autograd.grad(loss, S)
            if self.trace:
                self.trace("grad", outer, inner, c, self.S[c * ipc:(c + 1) * ipc].clone())
            with torch.no_grad():
                self.buf.mul_(mu).add_(grad)
                self.S.sub_(lr * self.buf)
            total = total + loss.detach()
        return total

    def batched_grad(self, net, outer, inner):
        """(per-class matching loss [own classes], its gradient w.r.t. S) at the current S, all (own)
        classes at once."""
        cfg = self.cfg
        K = self.c1 - self.c0  # groups in this pass; the labels are the global classes
        params = self.match_params(outer, inner)
        x_real = self.augmented_reals(outer, inner, params)
        sub = self.subsample_index(outer, inner)
        S = self.S.detach().requires_grad_(True)
        syn = self.decode(S, self.own)
        if sub is not None:
            syn = torch.gather(syn, 1, sub.view(K, -1, 1, 1, 1).expand(-1, -1, *syn.shape[2:]))
        syn = normalize(syn, self.mean, self.std)
        b, n = cfg.match.batch_real, syn.shape[1]
        cls = self.own
        group = torch.arange(K, device=self.device)
        x_syn = ops.diff_augment(syn.flatten(0, 1), params, self.match_strategy, group.repeat_interleave(n))
        weights = [w.detach().unsqueeze(0).repeat(K, *([1] * w.dim())).requires_grad_(True) for w in net.conv_weights()]

        def class_ce(x, m):
            with self.amp():
                feats = net.features_grouped(x.view(K, m, *x.shape[-3:]), weights)  # [K, m, D]
                logits = net.classifier(feats)
            logits, feats = logits.to(self.dtype), feats.to(self.dtype)
            return F.cross_entropy(logits.flatten(0, 1), cls.repeat_interleave(m), reduction="sum") / m, feats

        ce_real, feats_real = class_ce(x_real, b)
        g_real = torch.autograd.grad(ce_real, weights)
        ce_syn, feats_syn = class_ce(x_syn, n)
        g_syn = torch.autograd.grad(ce_syn, weights, create_graph=True)
        # the distance in the images' dtype, whatever precision the gradients were computed in
        per_class = sum(match_distance(gr.detach().to(self.dtype), gs.to(self.dtype), cfg.match.metric,
                                       tuple(range(1, gr.dim())))
                        for gr, gs in zip(g_real, g_syn))  # [K]
        if self.cfc_weight:
            protos = torch.zeros(self.K, feats_real.shape[-1], dtype=feats_real.dtype, device=self.device)
            protos[self.c0:self.c1] = prototypes_ref(feats_real)
            protos = self.comm.merge_rows(protos, self.c0, self.c1, "cfc prototypes")
            cfc = ops.cfc_loss(feats_syn.flatten(0, 1), cls.repeat_interleave(n), protos, cfg.udd.cfc_tau,
                               reduction="none")
            per_class = per_class + self.cfc_weight * cfc.view(K, n).mean(1)
        (grad,) = torch.autograd.grad(per_class.sum(), S)
        return per_class.detach(), grad

    def match_batched(self, net, outer, inner):
        cfg, K, ipc = self.cfg, self.K, self.cfg.run.ipc
        mu, lr = cfg.match.mom_img, cfg.match.lr_img
        per_class, grad = self.batched_grad(net, outer, inner)
        if self.trace:
            for c in range(self.c0, self.c1):
                self.trace("grad", outer, inner, c, self.S[c * ipc:(c + 1) * ipc].clone())
        m, L = mu ** K, (1 - mu ** K) / (1 - mu)
        rows = self.rows  # the other ranks' rows are theirs to move (their gradients are zero here)
        S, buf = self.S[rows], self.buf[rows]
        with torch.no_grad():
            buf.mul_(m).add_(grad[rows])
            if inner == cfg.match.inner_loop - 1:
                # up to the clamp, class c has had its own step and those of classes c+1..K-1
                w = torch.tensor([(1 - mu ** (K - c)) / (1 - mu) for c in range(self.c0, self.c1)], dtype=self.dtype,
                                 device=self.device).repeat_interleave(ipc).view(-1, 1, 1, 1)
                S.sub_(lr * w * buf)
                self.pending = torch.zeros_like(self.S)
                self.pending[rows] = lr * (L - w) * buf
            else:
                S.sub_(lr * L * buf)
        return per_class.sum()

    # -- loop ---------------------------------------------------------------------------------
    def boundary(self, outer):
        """Start of an outer iteration: clamp S to [0,1] (IDC), (UDD) search regions on the clamped
        S, then the rest of a split step."""
        with torch.no_grad():
            self.S.clamp_(0.0, 1.0)
            if self.trace:
                self.trace("boundary", outer, -1, -1, self.S.clone())
            if self.search is not None and outer % self.cfg.udd.region_every == 0:
                self.search_regions(outer)
            if self.pending is not None:
                self.S.sub_(self.pending)
                self.pending = None

    def outer_step(self, outer, should_stop=None):
        cfg = self.cfg
        net = self.new_network(outer)
        opt = make_sgd(net, cfg.net.lr_net, cfg.net.mom_net, cfg.net.wd_net)
        self.boundary(outer)
        loss_sum = 0.0
        for inner in range(cfg.match.inner_loop):
            if should_stop and self.comm.any(should_stop(), "stop flag"):  # every rank stops at the same point
                raise Stopped(f"stopped in outer iteration {outer}")
            loss_sum = loss_sum + self.match(net, outer, inner)
            self.network_update(net, opt)
        if self.comm.distributed:
            loss_sum = self.merge(loss_sum, net)
        self.last_loss = float(loss_sum) / (self.K * cfg.match.inner_loop)  # IDC's logged mean loss
        if not (math.isfinite(self.last_loss) and bool(torch.isfinite(self.S).all())):
            raise FloatingPointError(f"the matching loss or the images became NaN/infinite in outer iteration "
                                     f"{outer} (loss {self.last_loss}); lower --lr-img")
        self.outer_done = outer + 1
        return self.last_loss

    def merge(self, loss_sum, net):
        """End of a distributed outer iteration: every rank's rows of S, of the momentum buffer, of the
        split step's remainder and of the region boxes assembled on every rank; the matching loss summed
        over ranks; the ranks' networks checked to be identical. Returns the global loss sum."""
        c = self.comm
        self.S = c.merge_rows(self.S, self.rows.start, self.rows.stop, "state: images")
        self.buf = c.merge_rows(self.buf, self.rows.start, self.rows.stop, "state: momentum")
        if self.pending is not None:
            self.pending = c.merge_rows(self.pending, self.rows.start, self.rows.stop, "state: split step")
        if self.region_boxes is not None:
            self.region_boxes = c.merge_rows(self.region_boxes, self.frows.start, self.frows.stop, "state: boxes")
        total = c.all_reduce(torch.as_tensor(loss_sum, dtype=torch.float64, device=self.device).reshape(1).clone(),
                             "matching loss")
        with torch.no_grad():
            p = torch.cat([q.detach().reshape(-1) for q in net.parameters()]).double()
            c.check_same(torch.stack([p.sum(), p.square().sum()]), "matching networks")
        return float(total)

    def network_update(self, net, opt):
        """Train the matching network on shuffled real batches until n_data images were seen (with
        several ranks, each computes its part of every batch and the gradients are summed)."""
        numbers, self.net_batch = self.net_batches.run_until(self.net_batch, self.cfg.net.n_data)
        model = _Autocast(net, self.amp) if self.bf16 else net
        for b in numbers:
            idx = self.net_batches.indices(b)

            def load(pos, idx=idx):
                i = idx[pos]
                return normalize(self.data.to_float(i).to(self.dtype), self.mean, self.std), self.data.labels[i]
            part = self.comm.shard(idx.shape[0]) if self.comm.distributed else None
            train_step(model, opt, load, idx.shape[0], self.size, self.net_strategy, self.cfg.net.net_cutmix,
                       rng.key(self.cfg.run.seed, "net_update", b), part, self.reduce_grads)

    def reduce_grads(self, model):
        """Sum the network's gradients over the ranks (one flat all-reduce per batch)."""
        params = list(model.parameters())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        self.comm.all_reduce(flat, "network gradients")
        at = 0
        for p in params:
            p.grad = flat[at:at + p.numel()].view_as(p)
            at += p.numel()

    def run(self, progress=None, should_stop=None):
        """All outer iterations from where the run stands; progress(outer, loss, seconds) after each.
        should_stop() is polled between inner iterations: when true, Stopped is raised and the run
        stands mid-outer-iteration (a caller that wants to resume keeps a state() of the last boundary)."""
        t0 = time.time()
        for outer in range(self.outer_done, self.cfg.match.iterations):
            loss = self.outer_step(outer, should_stop)
            if progress:
                progress(outer, loss, time.time() - t0)
        return self.result()

    def result(self):
        """The distilled set as saved: stored images clamped to [0,1] (a stated deviation from IDC,
        which saves them unclamped; evaluation clamps anyway)."""
        return self.S.detach().clamp(0.0, 1.0).float()

    def labels(self):
        return torch.arange(self.K, device=self.device).repeat_interleave(self.cfg.run.ipc)

    def regions(self):
        """(source stored index [M], box [M, 4]) of the region views in use, or None."""
        if self.region_boxes is None:
            return None
        return self.dec_src.clone(), self.region_boxes.clone()
