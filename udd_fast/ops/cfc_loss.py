"""cfc_loss, forward and a fused first-order backward: UDD's category-wise feature contrastive loss
of features against class prototypes (`class_prototypes`, docs/method.md section 2).

Kernels: kernels/cfc_loss.py (Triton), csrc/cfc_loss_cpu.cpp, csrc/cfc_loss_cuda.cu.
"""
import torch
import torch.nn.functional as F

from .backend import _check, _load, _needs_grad, resolve


def class_prototypes(real_features: torch.Tensor) -> torch.Tensor:
    """The prototypes cfc_loss compares with: [K, D] L2-normalized mean feature of each class's augmented
    real batch ([K, B, D]), no gradient."""
    return F.normalize(real_features.detach().mean(1), dim=1)


def cfc_loss_ref(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, tau: float,
                 reduction: str = "mean") -> torch.Tensor:
    """mean_i -log softmax_k(<z_i, mu_k> / tau)[y_i] with z = L2-normalized features [n, D]
    (reduction='none' gives the per-sample terms)."""
    z = F.normalize(features, dim=1)
    return F.cross_entropy(z @ prototypes.t() / tau, labels, reduction=reduction)


class _CfcLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, labels, prototypes, tau, mean, mod):
        loss, logits, lse, denom = mod.cfc_loss_forward(features, labels, prototypes, tau)
        ctx.save_for_backward(features, labels, prototypes, logits, lse, denom)
        ctx.meta = (mod, tau, mean)
        return (loss.mean() if mean else loss).to(features.dtype)

    @staticmethod
    def backward(ctx, grad):
        features, labels, prototypes, logits, lse, denom = ctx.saved_tensors
        mod, tau, mean = ctx.meta
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        if torch.is_grad_enabled():
            # create_graph: a second derivative is wanted, so take this backward through the reference
            # (the engine never does: it differentiates its total loss once w.r.t. the images)
            with torch.enable_grad():
                loss = cfc_loss_ref(features, labels, prototypes, tau, "mean" if mean else "none")
                (gf,) = torch.autograd.grad(loss, features, grad, create_graph=True)
            return gf, None, None, None, None, None
        n = features.shape[0]
        g = (grad.expand(n) / n) if mean else grad
        g = g.to(lse.dtype).contiguous()
        gf = mod.cfc_loss_backward(g, features, labels, prototypes, logits, lse, denom, tau)
        return gf, None, None, None, None, None


def cfc_loss(features, labels, prototypes, tau, reduction="mean", validate=True):
    """CFC loss: -log softmax_k(<normalize(f_i), mu_k> / tau)[y_i], mean over i or per sample
    ('none'); prototypes [K, D] already L2-normalized. See cfc_loss_ref. Differentiable w.r.t.
    the features: the fused backward for a first derivative; under create_graph the backward runs
    through the reference so that second derivatives stay exact. Prototypes that require grad, or
    n == 0, run the reference. validate=False skips the label range check (labels built in range)."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    name = resolve(features)
    n, dim = features.shape
    if name == "torch" or n == 0 or _needs_grad(prototypes):
        if features.dtype in (torch.float16, torch.bfloat16):
            # in float32, as the fused kernels accumulate: F.normalize's eps (1e-12) is 0 in float16,
            # so a zero feature row would give 0/0 = NaN there
            return cfc_loss_ref(features.float(), labels, prototypes.float(), tau, reduction).to(features.dtype)
        return cfc_loss_ref(features, labels, prototypes, tau, reduction)
    labels = labels.to(features.device, torch.int64).reshape(-1).contiguous()
    protos = prototypes.detach().to(features.dtype).contiguous()
    if protos.dim() != 2 or protos.shape[1] != dim or labels.shape[0] != n:
        raise AssertionError(f"prototypes {tuple(protos.shape)} / labels {tuple(labels.shape)} do not match "
                             f"features {tuple(features.shape)}")
    if validate:
        _check(((labels >= 0) & (labels < protos.shape[0])).all(), "cfc_loss: labels out of range of the prototypes")
    return _CfcLoss.apply(features.contiguous(), labels, protos, float(tau), reduction == "mean", _load(name))
