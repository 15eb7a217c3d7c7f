"""response_map, forward only: UDD's response map R of the proxy's true class, the mean of R inside
each candidate window, and the usage entropy of R, in one pass (the windows are regions.py's).

Kernels: kernels/response_map.py (Triton), csrc/response_map_cpu.cpp, csrc/response_map_cuda.cu.
"""
import functools
import math

import torch
import torch.nn.functional as F

from .backend import _acc_dtype, _check, _load, _needs_grad, resolve


def response_map_ref(feature_map: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """R[n, i, j] = sum_ch W[y_n, ch, i, j] * F[n, ch, i, j]: the true-class logit split over locations
    (exact for a flatten-linear head). feature_map [N, Ch, h, w], head_weight [K, Ch*h*w]."""
    n, ch, h, w = feature_map.shape
    wy = head_weight.view(-1, ch, h, w)[labels]
    return (wy * feature_map).sum(1)


def window_scores_ref(R: torch.Tensor, tile: int, windows: torch.Tensor) -> torch.Tensor:
    """[N, 9] mean of R upsampled bilinearly (align_corners=False) to tile x tile, inside each window."""
    up = F.interpolate(R.unsqueeze(1), size=(tile, tile), mode="bilinear", align_corners=False)[:, 0]
    cs = F.pad(up.cumsum(1).cumsum(2), (1, 0, 1, 0))  # integral image
    y0, x0, y1, x1 = windows.unbind(1)
    s = cs[:, y1, x1] - cs[:, y0, x1] - cs[:, y1, x0] + cs[:, y0, x0]
    return s / ((y1 - y0) * (x1 - x0)).to(s.dtype)


def usage_entropy_ref(R: torch.Tensor) -> torch.Tensor:
    """UE per sample: entropy of ReLU(R) normalized over the h*w cells, divided by log(h*w); 0 when
    ReLU(R) sums to 0. mUE is its mean over formations."""
    p = F.relu(R).flatten(1)
    total = p.sum(1, keepdim=True)
    p = torch.where(total > 0, p / total.clamp_min(torch.finfo(p.dtype).tiny), torch.zeros_like(p))
    ent = -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(1)
    return ent / math.log(p.shape[1])


@functools.lru_cache(maxsize=64)
def _window_weights(h, w, tile, windows):
    """[h*w, 9] float64: window scores are linear in R (bilinear upsampling, then a box mean), so
    scores = R.flatten(1) @ this matrix; built by running the reference on the h*w unit maps."""
    basis = torch.eye(h * w, dtype=torch.float64).view(h * w, h, w)
    return window_scores_ref(basis, tile, torch.tensor(windows, dtype=torch.int64))


def response_map(feature_map, head_weight, labels, tile, windows):
    """(R [N,h,w], window scores [N,9], usage entropy [N]) in one pass: the true-class response
    (response_map_ref), the mean of R upsampled to tile x tile inside each window
    (window_scores_ref) and UE (usage_entropy_ref). Forward only: with inputs that require grad
    under grad mode it runs the references so autograd still works."""
    name = resolve(feature_map)
    n, ch, h, w = feature_map.shape
    if name == "torch" or n == 0 or _needs_grad(feature_map, head_weight):
        R = response_map_ref(feature_map, head_weight, labels)
        return R, window_scores_ref(R, tile, windows.to(R.device)), usage_entropy_ref(R)
    acc = _acc_dtype(feature_map.dtype)
    wmat = _window_weights(h, w, int(tile), tuple(map(tuple, windows.tolist()))).to(feature_map.device, acc)
    labels = labels.to(feature_map.device, torch.int64).reshape(-1).contiguous()
    head = head_weight.detach().to(feature_map.dtype).contiguous()
    _check(((labels >= 0) & (labels < head.shape[0])).all(), "response_map: labels out of range of the head")
    if head.shape[1] != ch * h * w or labels.shape[0] != n:
        raise AssertionError(f"head {tuple(head.shape)} / labels {tuple(labels.shape)} do not match "
                             f"feature map {tuple(feature_map.shape)}")
    with torch.no_grad():
        return tuple(_load(name).response_map_forward(feature_map.detach().contiguous(), head, labels, wmat))
