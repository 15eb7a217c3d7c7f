"""UDD's underutilized regions (docs/method.md section 2): candidate windows, the response and jitter
policies, the `auto` condition, and the boxes of region views. The response map, window scores and
mUE are `ops.response_map`, the jittered copies `ops.region_mask`.

Geometry: a formation is tile t of a stored image; its footprint is the tile, `tile` stored pixels
square (16 at 32 px with k=2, 14 at 28 px). Candidate windows are r = round_half_up(region_size *
tile) pixels square at the 3 x 3 positions round_half_up(i * (tile - r) / 2); boxes are integers in
stored coordinates, so a region view is `crop_resize` of its box, like a formation.
"""
import math

import torch

from . import ops, rng

POLICIES = ("auto", "response", "jitter", "none")


def round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def window_grid(tile: int, region_size: float, device=None) -> torch.Tensor:
    """[9, 4] windows (y0, x0, y1, x1) in tile coordinates, row-major (ties go to the lowest index)."""
    r = round_half_up(region_size * tile)
    if not 1 <= r <= tile:
        raise ValueError(f"region size {region_size} gives a {r}-pixel window in a {tile}-pixel tile")
    pos = [round_half_up(i * (tile - r) / 2) for i in range(3)]
    return torch.tensor([(y, x, y + r, x + r) for y in pos for x in pos], dtype=torch.int64, device=device)


def window_pixel_masks(windows: torch.Tensor, tile: int, size: int) -> torch.Tensor:
    """[9, size, size] bool: decoded pixels whose source (align_corners=False) lies in each window."""
    src = torch.floor((torch.arange(size, device=windows.device, dtype=torch.float64) + 0.5) * tile / size).long()
    rows = (src.view(1, -1) >= windows[:, 0:1]) & (src.view(1, -1) < windows[:, 2:3])
    cols = (src.view(1, -1) >= windows[:, 1:2]) & (src.view(1, -1) < windows[:, 3:4])
    return rows.unsqueeze(2) & cols.unsqueeze(1)


class RegionSearch:
    """Chooses one underutilized window per formation with a fixed proxy network."""

    def __init__(self, proxy, size: int, factor: int, region_size: float = 0.5, policy: str = "auto",
                 jitter_sigma: float = 0.2, jitter_draws: int = 4, seed: int = 0, chunk: int = 32):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.proxy, self.size, self.policy = proxy, size, policy
        self.tile = math.ceil(size / factor)
        self.windows = window_grid(self.tile, region_size)
        self.masks = window_pixel_masks(self.windows, self.tile, size)
        self.sigma, self.draws, self.seed, self.chunk = jitter_sigma, jitter_draws, seed, chunk

    @torch.no_grad()
    def proxy_outputs(self, x01, labels, mean, std):
        """Response maps R [N,h,w], window scores [N,9], true-class probabilities [N] and predictions of
        the proxy."""
        fmap = self.proxy.feature_map((x01 - mean) / std)
        logits = self.proxy.classifier(fmap.flatten(1))
        R, scores, _ = ops.response_map(fmap, self.proxy.classifier.weight, labels, self.tile,
                                        self.windows.to(x01.device))
        prob = logits.softmax(1).gather(1, labels.view(-1, 1))[:, 0]
        return R, scores, prob, logits.argmax(1)

    @torch.no_grad()
    def jitter_scores(self, x01, labels, prob, mean, std, keys):
        """[N, 9] mean over draws of |p_y(x) - p_y(jittered x)| (keyed Gaussian noise inside each window)."""
        n, c, h, w = x01.shape
        nw, d = self.windows.shape[0], self.draws
        out = []
        for i in range(0, n, self.chunk):
            xs = x01[i:i + self.chunk]
            noise = rng.normal(keys[i:i + self.chunk], nw * d * c * h * w).to(x01.dtype) * self.sigma
            jit = ops.region_mask(xs, self.masks.to(xs.device), noise.view(-1, nw, d, c, h, w), mean, std)
            logits = self.proxy(jit.flatten(0, 2))
            lab = labels[i:i + self.chunk].repeat_interleave(nw * d)
            pj = logits.softmax(1).gather(1, lab.view(-1, 1)).view(-1, nw, d)
            out.append((prob[i:i + self.chunk].view(-1, 1, 1) - pj).abs().mean(2))
        return torch.cat(out)

    @torch.no_grad()
    def select(self, x01, labels, mean, std, key: int, first: int = 0):
        """For decoded formations x01 [N,C,H,W] in [0,1]: (window index [N], used jitter [N] bool, R).
        The jitter noise is keyed by each formation's index in the whole set: x01 holds formations
        first..first+N-1 (a rank's share)."""
        R, scores, prob, pred = self.proxy_outputs(x01, labels, mean, std)
        n = x01.shape[0]
        if self.policy == "response":
            use_jitter = torch.zeros(n, dtype=torch.bool, device=x01.device)
        elif self.policy == "jitter":
            use_jitter = torch.ones(n, dtype=torch.bool, device=x01.device)
        else:  # auto: the class evidence map is meaningful only where the proxy is right
            use_jitter = pred != labels
        choice = scores.argmin(1)
        if bool(use_jitter.any()):
            idx = use_jitter.nonzero().flatten()
            keys = rng.subkeys(key, idx + first)
            jit = self.jitter_scores(x01[idx], labels[idx], prob[idx], mean, std, keys)
            choice[idx] = jit.argmin(1)
        return choice, use_jitter, R

    def boxes(self, choice: torch.Tensor, tile_origin: torch.Tensor) -> torch.Tensor:
        """Stored-coordinate boxes [N,4] of the chosen windows, given each formation's tile origin [N,2]."""
        w = self.windows.to(choice.device)[choice]
        return w + tile_origin.repeat(1, 2)
