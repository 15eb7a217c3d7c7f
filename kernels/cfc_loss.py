"""cfc_loss in Triton, one program per sample (row of features):
forward: ||f||, logits s_k = <f, mu_k> / max(||f||, eps) / tau, logsumexp, loss = lse - s_y;
backward: ds = g (softmax(s) - onehot(y)) / tau, dz = ds @ mu, df = (dz - z <z, dz>) / ||f||
(dz / eps where the norm is clamped, as F.normalize). The logits, lse and denominators are saved
by the forward for the backward. D is a constexpr: a runtime loop bound fails in Triton's
interpreter under NumPy 2."""
import torch
import triton
import triton.language as tl

BLOCK_D = 64
EPS = 1e-12  # F.normalize's eps


def _consts(tau, acc_t, device):
    # tau and eps as a tensor: a Python float argument would be float32 in the kernel
    return torch.tensor([tau, EPS], dtype=acc_t, device=device)


@triton.jit
def _cfc_fwd(f_ptr, lab_ptr, mu_ptr, loss_ptr, s_ptr, lse_ptr, den_ptr, K, c_ptr,
             D: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    tau = tl.load(c_ptr)
    eps = tl.load(c_ptr + 1)
    k = tl.arange(0, BLOCK_K)
    live_k = k < K
    dots = tl.zeros((BLOCK_K,), dtype=ACC)
    sq = tl.zeros((BLOCK_D,), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        f = tl.load(f_ptr + i * D + d, mask=d < D, other=0).to(ACC)
        mu = tl.load(mu_ptr + k[:, None] * D + d[None, :], mask=live_k[:, None] & (d[None, :] < D), other=0).to(ACC)
        dots += tl.sum(mu * f[None, :], axis=1)
        sq += f * f
    den = tl.maximum(tl.sqrt(tl.sum(sq, axis=0)), eps)
    s = dots / den / tau
    s = tl.where(live_k, s, -float("inf"))
    mx = tl.max(s, axis=0)
    lse = mx + tl.log(tl.sum(tl.where(live_k, tl.exp(s - mx), 0.0), axis=0))
    y = tl.load(lab_ptr + i)
    sy = tl.sum(tl.where(k == y, s, 0.0), axis=0)
    tl.store(s_ptr + i * K + k, s, mask=live_k)
    tl.store(lse_ptr + i, lse)
    tl.store(den_ptr + i, den)
    tl.store(loss_ptr + i, lse - sy)


@triton.jit
def _cfc_bwd(g_ptr, f_ptr, lab_ptr, mu_ptr, s_ptr, lse_ptr, den_ptr, gf_ptr, K, c_ptr,
             D: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    tau = tl.load(c_ptr)
    eps = tl.load(c_ptr + 1)
    k = tl.arange(0, BLOCK_K)
    live_k = k < K
    y = tl.load(lab_ptr + i)
    s = tl.load(s_ptr + i * K + k, mask=live_k, other=0)
    p = tl.where(live_k, tl.exp(s - tl.load(lse_ptr + i)), 0.0)
    ds = tl.load(g_ptr + i) * (p - (k == y).to(ACC)) / tau
    den = tl.load(den_ptr + i)
    clamped = den <= eps  # F.normalize divides by the constant eps there
    # pass 1: <z, dz>; pass 2: the gradient (dz recomputed: cheaper than a second buffer)
    zdz = tl.zeros((BLOCK_D,), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        f = tl.load(f_ptr + i * D + d, mask=d < D, other=0).to(ACC)
        mu = tl.load(mu_ptr + k[:, None] * D + d[None, :], mask=live_k[:, None] & (d[None, :] < D), other=0).to(ACC)
        zdz += (f / den) * tl.sum(ds[:, None] * mu, axis=0)
    proj = tl.where(clamped, 0.0, tl.sum(zdz, axis=0))
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        f = tl.load(f_ptr + i * D + d, mask=d < D, other=0).to(ACC)
        mu = tl.load(mu_ptr + k[:, None] * D + d[None, :], mask=live_k[:, None] & (d[None, :] < D), other=0).to(ACC)
        dz = tl.sum(ds[:, None] * mu, axis=0)
        tl.store(gf_ptr + i * D + d, ((dz - (f / den) * proj) / den).to(gf_ptr.dtype.element_ty), mask=d < D)


def _acc(dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def cfc_loss_forward(features, labels, protos, tau):
    """features [n,D]; labels [n] int64; protos [K,D] (features' dtype) -> (loss [n], logits [n,K],
    lse [n], denominators [n]), all float32 (float64 for double)."""
    n, dim = features.shape
    kk = protos.shape[0]
    acc_t, acc_tl = _acc(features.dtype)
    loss, lse, den = (torch.empty(n, dtype=acc_t, device=features.device) for _ in range(3))
    s = torch.empty(n, kk, dtype=acc_t, device=features.device)
    if n:
        _cfc_fwd[(n,)](features, labels, protos, loss, s, lse, den, kk, _consts(tau, acc_t, features.device),
                       D=dim, ACC=acc_tl, BLOCK_K=triton.next_power_of_2(kk), BLOCK_D=BLOCK_D)
    return loss, s, lse, den


def cfc_loss_backward(grad, features, labels, protos, logits, lse, den, tau):
    """grad [n] (per-sample loss gradient, accumulation dtype) -> gradient of the features [n,D]."""
    n, dim = features.shape
    kk = protos.shape[0]
    acc_t, acc_tl = _acc(features.dtype)
    gf = torch.empty_like(features)
    if n:
        _cfc_bwd[(n,)](grad, features, labels, protos, logits, lse, den, gf, kk,
                       _consts(tau, acc_t, features.device), D=dim, ACC=acc_tl,
                       BLOCK_K=triton.next_power_of_2(kk), BLOCK_D=BLOCK_D)
    return gf
