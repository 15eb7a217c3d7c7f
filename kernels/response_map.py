"""response_map in Triton: one program per sample computes R (the true-class head row times the
feature map, summed over channels), the window scores (R times the [h*w, NW] window-weight matrix
udd_fast/ops/response_map.py builds: upsampling and box means are linear in R) and the usage entropy. The channel
count is a constexpr: a runtime loop bound fails in Triton's interpreter under NumPy 2."""
import torch
import triton
import triton.language as tl

from .utils import acc_types

BLOCK_C = 16


@triton.jit
def _response_map_fwd(f_ptr, w_ptr, lab_ptr, m_ptr, r_ptr, s_ptr, ue_ptr, HW, NW,
                      CH: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                      BLOCK_W: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    y = tl.load(lab_ptr + n)
    p = tl.arange(0, BLOCK_P)
    live_p = p < HW
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for c0 in range(0, CH, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C)
        off = ch[:, None] * HW + p[None, :]
        ok = (ch[:, None] < CH) & live_p[None, :]
        f = tl.load(f_ptr + n * CH * HW + off, mask=ok, other=0).to(ACC)
        w = tl.load(w_ptr + y * CH * HW + off, mask=ok, other=0).to(ACC)
        acc += f * w
    r = tl.sum(acc, axis=0)  # [BLOCK_P]
    tl.store(r_ptr + n * HW + p, r.to(r_ptr.dtype.element_ty), mask=live_p)
    # window scores: r @ M
    k = tl.arange(0, BLOCK_W)
    mm = tl.load(m_ptr + p[:, None] * NW + k[None, :], mask=live_p[:, None] & (k[None, :] < NW), other=0).to(ACC)
    s = tl.sum(r[:, None] * mm, axis=0)
    tl.store(s_ptr + n * NW + k, s.to(s_ptr.dtype.element_ty), mask=k < NW)
    # usage entropy of ReLU(R) over the cells (0 when it sums to 0)
    pos = tl.where(live_p, tl.maximum(r, 0.0), 0.0)
    total = tl.sum(pos, axis=0)
    q = pos / tl.where(total > 0, total, 1.0)
    ent = -tl.sum(tl.where(q > 0, q * tl.log(tl.where(q > 0, q, 1.0)), 0.0), axis=0)
    # HW as an ACC value: an HW of 1 reaches the kernel as a Python int (the JIT makes ints equal to 1
    # constants), which has no .to; a 1x1 map gives 0 / log(1), NaN, as the reference
    ue = ent / tl.log(tl.zeros((), ACC) + HW)
    tl.store(ue_ptr + n, ue.to(ue_ptr.dtype.element_ty))


def _num_warps(block_p):
    """Warps for a map of BLOCK_P cells: one per 64 cells, 4 to 16. A program holds R and the
    [BLOCK_P, BLOCK_W] window weights in registers; at 4 warps (Triton's default) the 28 x 28 map of
    ConvNet-3 at 224 px (BLOCK_P 1024) took 254-255 registers in float32 and spilled 544-584 bytes
    per thread in float64 (sm_90/sm_80, bench/compile_report.py); at 16 warps, 64-123 and 98, no
    spill. Past that it does not scale: maps of over 1024 cells (ConvNet-3 past 256 px) spilled in
    float64 at 16 warps, over 2048 cells in float32 too (bench/RESULTS.md)."""
    return min(16, max(4, block_p // 64))


def response_map_forward(fmap, head, labels, wmat):
    """fmap [N,Ch,h,w]; head [K, Ch*h*w] (fmap's dtype); labels [N] int64; wmat [h*w, NW] float32
    (float64 for double) -> (R [N,h,w], scores [N,NW], ue [N]) in fmap's dtype."""
    n, ch, h, w = fmap.shape
    nw = wmat.shape[1]
    acc_tl = acc_types(fmap.dtype)[1]
    R = torch.empty(n, h, w, dtype=fmap.dtype, device=fmap.device)
    scores = torch.empty(n, nw, dtype=fmap.dtype, device=fmap.device)
    ue = torch.empty(n, dtype=fmap.dtype, device=fmap.device)
    if n:
        block_p = triton.next_power_of_2(h * w)
        _response_map_fwd[(n,)](fmap, head, labels, wmat, R, scores, ue, h * w, nw, CH=ch, ACC=acc_tl,
                                BLOCK_C=BLOCK_C, BLOCK_P=block_p, BLOCK_W=triton.next_power_of_2(nw),
                                num_warps=_num_warps(block_p))
    return R, scores, ue
