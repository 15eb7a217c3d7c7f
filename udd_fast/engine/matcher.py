"""Gradient matching of the synthetic set against real batches: the keyed draws of an inner
iteration, the one matching-loss recipe, and the two forms that apply it (docs/method.md sections 1, 2, 4).

- `SequentialMatcher`: IDC's loop, one class at a time, one image step per class.
- `BatchedMatcher`: all (own) classes in one grouped network pass and one image step; its draws can be
  keyed from device counters, so that a captured inner iteration makes them itself.
"""
import torch
import torch.nn.functional as F

from .. import ops, rng
from ..ops.cfc_loss import class_prototypes
from ..logs import quiet
from ..augment import Strategy, sample_params
from ..matching import match_distance
from ..sampling import class_batch_indices
from ..train import normalize
from .memory import class_groups, device_memory


def class_losses(net, weights, x_real, x_syn, labels, dtype, amp, metric: str, cfc_weight: float, tau: float,
                 protos=None, merge_protos=None):
    """The matching loss of G classes at once, [G]: for group g (real x_real[g] [B,...] and synthetic
    x_syn[g] [n,...], both augmented, label labels[g]), the distance between the conv-weight gradients
    of the class's cross-entropy on the real and on the synthetic batch, plus cfc_weight times the CFC
    loss of the synthetic features against the class prototypes (given as `protos`, or made from this
    pass's real features and completed by `merge_protos`). Each group runs with its own copy of the
    conv weights (`weights`, [G, ...] each, requiring grad) in one grouped pass, so the per-group
    gradients come out of one backward. Differentiable in x_syn (create_graph)."""
    G = x_real.shape[0]

    def ce(x):
        m = x.shape[1]
        with amp():
            feats = net.features_grouped(x, weights)  # [G, m, D]
            logits = net.classifier(feats)
        logits, feats = logits.to(dtype), feats.to(dtype)
        return F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(m), reduction="sum") / m, feats

    ce_real, feats_real = ce(x_real)
    g_real = torch.autograd.grad(ce_real, weights)
    ce_syn, feats_syn = ce(x_syn)
    g_syn = torch.autograd.grad(ce_syn, weights, create_graph=True)
    # the distance in the images' dtype, whatever precision the gradients were computed in
    per_class = sum(match_distance(gr.detach().to(dtype), gs.to(dtype), metric, tuple(range(1, gr.dim())))
                    for gr, gs in zip(g_real, g_syn))
    if cfc_weight:
        if protos is None:
            protos = merge_protos(class_prototypes(feats_real))
        n = x_syn.shape[1]
        cfc = ops.cfc_loss(feats_syn.flatten(0, 1), labels.repeat_interleave(n), protos, tau, reduction="none",
                           validate=False)
        per_class = per_class + cfc_weight * cfc.view(G, n).mean(1)
    return per_class


def grouped_weights(net, groups: int):
    """The network's conv weights repeated per group, [groups, ...] each, as leaves that require grad."""
    return [w.detach().unsqueeze(0).repeat(groups, *([1] * w.dim())).requires_grad_(True)
            for w in net.conv_weights()]


class Matcher:
    """What both forms share: the keyed draws and the recipe's settings. `step(net, outer, inner)`
    moves the images and returns the inner iteration's summed matching loss (a device scalar)."""

    def __init__(self, cfg, data, syn, region_state, dtype, mean, std, amp, comm, classes: tuple, trace=None):
        self.cfg, self.data, self.syn, self.region_state = cfg, data, syn, region_state
        self.dtype, self.mean, self.std, self.amp, self.comm, self.trace = dtype, mean, std, amp, comm, trace
        self.c0, self.c1 = classes
        self.G = self.c1 - self.c0
        self.device = syn.S.device
        self.own = torch.arange(self.c0, self.c1, device=self.device)  # the labels of this rank's classes
        self.strategy = Strategy.parse(cfg.match.match_aug)
        n_total = syn.n_dec * (2 if region_state is not None and region_state.search is not None else 1)
        self.n_total, self.n_syn = n_total, min(n_total, cfg.match.batch_syn_max)
        self.cfc_weight = cfg.udd.cfc_weight if region_state is not None else 0.0
        self.prefix = {p: rng.key_tensor(rng.key(cfg.run.seed, p), self.device) for p in ("match_aug", "subsample")}

    def views(self):
        return None if self.region_state is None else self.region_state.boxes

    # -- the draws of an inner iteration: device work only, keyed by (seed, outer, inner, class), where
    # outer and inner are ints or the loop's device counters (0-dim int64 tensors): the same numbers --
    def _keys(self, purpose, outer, inner):
        """[own classes] keys: key(seed, purpose, outer, inner, c) for each own class c."""
        if isinstance(outer, torch.Tensor):
            base = rng.chain(self.prefix[purpose], outer, inner)
        else:
            base = rng.key_tensor(rng.key(self.cfg.run.seed, purpose, outer, inner), self.device)
        return rng.fold(base, self.own)

    def params(self, outer, inner):
        """[own classes, P]: each class's siamese augmentation draw."""
        return sample_params(self._keys("match_aug", outer, inner), self.strategy, self.syn.size)

    def subsample_index(self, outer, inner):
        """[own classes, n_syn] samples to keep per class (IDC: random subset when more than batch_syn_max)."""
        if self.n_total <= self.n_syn:
            return None
        return rng.permutation(self._keys("subsample", outer, inner), self.n_total)[:, :self.n_syn]

    def real_indices(self, outer, inner, host=False):
        """[classes, B] dataset indices of the inner iteration's real batches: the own classes' on the
        device, or (host) every class's on the CPU, the same numbers (the plan of staged reads)."""
        table, counts = self.data.host_index if host else (self.data.class_indices, self.data.class_counts)
        idx = class_batch_indices(table, counts, self.cfg.run.seed, outer * self.cfg.match.inner_loop + inner,
                                  self.cfg.match.batch_real, self.data.host_counts)
        return idx if host else idx[self.c0:self.c1]

    def real_batches(self, outer, inner):
        """[own classes, B, C, H, W] normalized real batches, not yet augmented."""
        b, size, C = self.cfg.match.batch_real, self.syn.size, self.syn.C
        idx = self.real_indices(outer, inner)
        x = self.data.to_float(idx.reshape(-1)).to(self.dtype)
        return normalize(x, self.mean, self.std).view(idx.shape[0], b, C, size, size)

    def draws(self, outer, inner):
        return dict(params=self.params(outer, inner), reals=self.real_batches(outer, inner),
                    sub=self.subsample_index(outer, inner))

    def augment(self, x, params):
        """x [G, m, C, H, W] under class g's (siamese) draw params[g]: augmenting the real and the
        synthetic batch apart under one draw equals IDC's augmenting them together."""
        G, m = x.shape[:2]
        group = torch.arange(G, device=self.device).repeat_interleave(m)
        return ops.diff_augment(x.flatten(0, 1), params, self.strategy, group, validate=False).view(x.shape)

    def synthetic(self, S, classes: slice, sub):
        """[classes, n_syn, C, H, W]: the decoded (and subsampled) synthetic batches, normalized."""
        syn = self.syn.decode(S, classes, self.views())
        if sub is not None:
            syn = torch.gather(syn, 1, sub.view(sub.shape[0], -1, 1, 1, 1).expand(-1, -1, *syn.shape[2:]))
        return normalize(syn, self.mean, self.std)

    def recipe(self, net, weights, x_real, x_syn, labels, protos=None, merge_protos=None):
        m = self.cfg.match
        return class_losses(net, weights, x_real, x_syn, labels, self.dtype, self.amp, m.metric, self.cfc_weight,
                            self.cfg.udd.cfc_tau, protos, merge_protos)

    def _trace(self, outer, inner, c):
        if self.trace:
            ipc = self.syn.ipc
            self.trace("grad", outer, inner, c, self.syn.S[c * ipc:(c + 1) * ipc].clone())


class SequentialMatcher(Matcher):
    """IDC's loop: for each class, its loss and gradient at the current images, then one image step."""

    def step(self, net, outer, inner):
        params = self.params(outer, inner)
        x_real = self.augment(self.real_batches(outer, inner), params)
        protos = None
        if self.cfc_weight:
            with torch.no_grad(), self.amp():
                feats = net.features(x_real.flatten(0, 1)).view(self.G, x_real.shape[1], -1)
            protos = class_prototypes(feats.to(self.dtype))
        sub = self.subsample_index(outer, inner)
        total = 0.0
        for c in range(self.syn.K):
            S = self.syn.S.detach().requires_grad_(True)
            x_syn = self.augment(self.synthetic(S, slice(c, c + 1), None if sub is None else sub[c:c + 1]),
                                 params[c:c + 1])
            loss = self.recipe(net, grouped_weights(net, 1), x_real[c:c + 1], x_syn, self.own[c:c + 1], protos)[0]
            (grad,) = torch.autograd.grad(loss, S)
            self._trace(outer, inner, c)
            self.syn.step_class(grad)
            total = total + loss.detach()
        return total


class BatchedMatcher(Matcher):
    """All (own) classes at once: grouped network passes for the per-class losses (one, unless memory
    splits the classes into groups: engine/memory.py), one image step. `grad` reads nothing but its
    draws, the images, the network's parameters and the region boxes, so the static path
    (engine/static_inner.py) runs it inside a captured inner iteration."""

    def __init__(self, *args, log=quiet, **kw):
        super().__init__(*args, **kw)
        share = self.cfg.match.match_memory
        total = device_memory(self.device)
        self.plan(None if total is None else share * total)
        if len(self.groups) > 1:
            of = f" of {share:g} x {total / 2 ** 30:.1f} GiB, --match-memory" if total else ""
            log(f"batched matching: {self.G} classes in {len(self.groups)} groups of at most "
                f"{max(g.stop - g.start for g in self.groups)} (modelled peak {self.peak / 2 ** 30:.1f} GiB{of})")

    def plan(self, budget):
        """Split the own classes into groups whose grouped pass fits `budget` bytes (None: none)."""
        m = self.cfg.match
        # the first layer's width: the ConvNet's, or ResNetAP-10's 64-wide stem (the model is the ConvNet's,
        # not yet measured for ResNetAP)
        width = self.cfg.net.net_width if (self.cfg.net.net_arch or "convnet") == "convnet" else 64
        self.groups, self.peak = class_groups(self.G, m.batch_real, self.n_syn, width, self.syn.size,
                                              self.syn.S.element_size(), budget)

    def prototypes(self, net, reals, params):
        """CFC's class prototypes of all classes from the real batches, made before any group's loss
        when the classes are split (a group's loss compares against every class's prototype)."""
        own = []
        with torch.no_grad():
            for g in self.groups:
                x = self.augment(reals[g], params[g])
                with self.amp():
                    feats = net.features_grouped(x, grouped_weights(net, g.stop - g.start))
                own.append(class_prototypes(feats.to(self.dtype)))
        return self.merge_protos(torch.cat(own))

    def merge_protos(self, own):
        protos = torch.zeros(self.syn.K, own.shape[-1], dtype=own.dtype, device=self.device)
        protos[self.c0:self.c1] = own
        return self.comm.merge_rows(protos, self.c0, self.c1, "cfc prototypes")

    def grad(self, net, params, reals, sub):
        """(per-class matching loss [own classes], its gradient w.r.t. S) at the current S. Each group's
        gradient touches its own classes' rows of S only, so their sum is each one's, exactly."""
        S = self.syn.S.detach().requires_grad_(True)
        protos = self.prototypes(net, reals, params) if self.cfc_weight and len(self.groups) > 1 else None
        losses, grad = [], None
        for g in self.groups:
            x_real = self.augment(reals[g], params[g])
            x_syn = self.augment(self.synthetic(S, slice(self.c0 + g.start, self.c0 + g.stop),
                                                None if sub is None else sub[g]), params[g])
            per_class = self.recipe(net, grouped_weights(net, g.stop - g.start), x_real, x_syn, self.own[g],
                                    protos=protos, merge_protos=self.merge_protos)
            (part,) = torch.autograd.grad(per_class.sum(), S)
            losses.append(per_class.detach())
            grad = part if grad is None else grad + part
        return torch.cat(losses) if len(losses) > 1 else losses[0], grad

    def trace_all(self, outer, inner):
        for c in range(self.c0, self.c1):
            self._trace(outer, inner, c)

    def step(self, net, outer, inner):
        per_class, grad = self.grad(net, **self.draws(outer, inner))
        self.trace_all(outer, inner)
        self.syn.step_classes(grad, inner == self.cfg.match.inner_loop - 1)
        return per_class.sum()
