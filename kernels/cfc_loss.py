"""cfc_loss in Triton, one program per sample (row of features):
forward: ||f||, logits s_k = <f, mu_k> / max(||f||, eps) / tau, logsumexp, loss = lse - s_y;
backward: ds = g (softmax(s) - onehot(y)) / tau, dz = ds @ mu, df = (dz - z <z, dz>) / ||f||
(dz / eps where the norm is clamped, as F.normalize). The logits, lse and denominators are saved
by the forward for the backward.

The classes go BLOCK_K at a time (an online logsumexp in the forward), so a program holds one
BLOCK_K x BLOCK_D tile at any K: a single K-wide tile spilled registers from K = 100 on (see
bench/RESULTS.md). K and D are constexprs: a runtime loop bound fails in Triton's interpreter under
NumPy 2."""
import functools

import torch
import triton
import triton.language as tl

from .utils import acc_types

BLOCK_D = 64
MAX_BLOCK_K = 16  # classes per step
# One warp per row: its reductions need no barrier inside the loops. With 32 classes per step, or 2
# or 4 warps, some sm_80/sm_90 variant spilled registers (bench/compile_report.py).
NUM_WARPS = 1
EPS = 1e-12  # F.normalize's eps


@functools.lru_cache(maxsize=64)
def _consts(tau, acc_t, device):
    # tau and eps as a tensor: a Python float argument would be float32 in the kernel. Filled on the
    # device, not copied from host memory (the loop's first call makes it); made once per (tau, dtype,
    # device).
    return torch.stack([torch.full((), v, dtype=acc_t, device=device) for v in (tau, EPS)])


def _block_k(k):
    return min(triton.next_power_of_2(k), MAX_BLOCK_K)


@triton.jit
def _cfc_fwd(f_ptr, lab_ptr, mu_ptr, loss_ptr, s_ptr, lse_ptr, den_ptr, c_ptr, K: tl.constexpr,
             D: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    tau = tl.load(c_ptr)
    eps = tl.load(c_ptr + 1)
    y = tl.load(lab_ptr + i)
    sq = tl.zeros((BLOCK_D,), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        f = tl.load(f_ptr + i * D + d, mask=d < D, other=0).to(ACC)
        sq += f * f
    den = tl.maximum(tl.sqrt(tl.sum(sq, axis=0)), eps)
    inv = 1.0 / (den * tau)  # one division per row, not one per class
    mx = tl.full((), -float("inf"), ACC)  # running max and sum of exp(s - max)
    tot = tl.zeros((), ACC)
    sy = tl.zeros((), ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        live_k = k < K
        prod = tl.zeros((BLOCK_K, BLOCK_D), dtype=ACC)  # reduced once after the loop: no barrier inside it
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            f = tl.load(f_ptr + i * D + d, mask=d < D, other=0).to(ACC)
            mu = tl.load(mu_ptr + k[:, None] * D + d[None, :], mask=live_k[:, None] & (d[None, :] < D),
                         other=0).to(ACC)
            prod += mu * f[None, :]
        s = tl.sum(prod, axis=1) * inv
        tl.store(s_ptr + i * K + k, s, mask=live_k)
        s = tl.where(live_k, s, -float("inf"))
        new = tl.maximum(mx, tl.max(s, axis=0))
        tot = tot * tl.exp(mx - new) + tl.sum(tl.where(live_k, tl.exp(s - new), 0.0), axis=0)
        mx = new
        sy += tl.sum(tl.where(k == y, s, 0.0), axis=0)
    lse = mx + tl.log(tot)
    tl.store(lse_ptr + i, lse)
    tl.store(den_ptr + i, den)
    tl.store(loss_ptr + i, lse - sy)


@triton.jit
def _dz(d, i, y, gt, lse, s_ptr, mu_ptr, K: tl.constexpr, D: tl.constexpr, ACC: tl.constexpr,
        BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """dz[d] = sum_k ds_k mu[k, d], ds_k = (g / tau) (softmax(s)_k - [k == y]), BLOCK_K classes at a time."""
    prod = tl.zeros((BLOCK_K, BLOCK_D), dtype=ACC)  # reduced once after the loop: no barrier inside it
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        live_k = k < K
        s = tl.load(s_ptr + i * K + k, mask=live_k, other=0)
        p = tl.where(live_k, tl.exp(s - lse), 0.0)
        ds = gt * (p - (k == y).to(ACC))
        mu = tl.load(mu_ptr + k[:, None] * D + d[None, :], mask=live_k[:, None] & (d[None, :] < D), other=0).to(ACC)
        prod += ds[:, None] * mu
    return tl.sum(prod, axis=0)


@triton.jit
def _cfc_bwd(g_ptr, f_ptr, lab_ptr, mu_ptr, s_ptr, lse_ptr, den_ptr, gf_ptr, c_ptr, K: tl.constexpr,
             D: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    tau = tl.load(c_ptr)
    eps = tl.load(c_ptr + 1)
    y = tl.load(lab_ptr + i)
    gt = tl.load(g_ptr + i) / tau
    lse = tl.load(lse_ptr + i)
    den = tl.load(den_ptr + i)
    rden = 1.0 / den  # one division per row, not one per element
    clamped = den <= eps  # F.normalize divides by the constant eps there
    # pass 1: <z, dz>; pass 2: the gradient (dz recomputed: cheaper than a second buffer)
    zdz = tl.zeros((BLOCK_D,), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        f = tl.load(f_ptr + i * D + d, mask=d < D, other=0).to(ACC)
        zdz += (f * rden) * _dz(d, i, y, gt, lse, s_ptr, mu_ptr, K, D, ACC, BLOCK_K, BLOCK_D)
    proj = tl.where(clamped, 0.0, tl.sum(zdz, axis=0))
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        f = tl.load(f_ptr + i * D + d, mask=d < D, other=0).to(ACC)
        dz = _dz(d, i, y, gt, lse, s_ptr, mu_ptr, K, D, ACC, BLOCK_K, BLOCK_D)
        tl.store(gf_ptr + i * D + d, ((dz - (f * rden) * proj) * rden).to(gf_ptr.dtype.element_ty), mask=d < D)


def cfc_loss_forward(features, labels, protos, tau):
    """features [n,D]; labels [n] int64; protos [K,D] (features' dtype) -> (loss [n], logits [n,K],
    lse [n], denominators [n]), all float32 (float64 for double)."""
    n, dim = features.shape
    kk = protos.shape[0]
    acc_t, acc_tl = acc_types(features.dtype)
    loss, lse, den = (torch.empty(n, dtype=acc_t, device=features.device) for _ in range(3))
    s = torch.empty(n, kk, dtype=acc_t, device=features.device)
    if n:
        _cfc_fwd[(n,)](features, labels, protos, loss, s, lse, den, _consts(tau, acc_t, features.device),
                       K=kk, D=dim, ACC=acc_tl, BLOCK_K=_block_k(kk), BLOCK_D=BLOCK_D, num_warps=NUM_WARPS)
    return loss, s, lse, den


def cfc_loss_backward(grad, features, labels, protos, logits, lse, den, tau):
    """grad [n] (per-sample loss gradient, accumulation dtype) -> gradient of the features [n,D]."""
    n, dim = features.shape
    kk = protos.shape[0]
    acc_t, acc_tl = acc_types(features.dtype)
    gf = torch.empty_like(features)
    if n:
        _cfc_bwd[(n,)](grad, features, labels, protos, logits, lse, den, gf, _consts(tau, acc_t, features.device),
                       K=kk, D=dim, ACC=acc_tl, BLOCK_K=_block_k(kk), BLOCK_D=BLOCK_D, num_warps=NUM_WARPS)
    return gf
