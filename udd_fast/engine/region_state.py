"""UDD's region state in the loop (docs/method.md section 2): the search on the clamped images at an outer
boundary, each formation's chosen window as a box in stored coordinates, the policy counts and mUE."""
import math

import torch

from .. import ops, rng
from ..region_search import RegionSearch, window_grid
from .synthetic import SyntheticSet, check_boxes


class RegionState:
    """Everything UDD's proxy serves in the loop. With a region policy (`searching`), `boxes`
    [K*n_dec, 4] (None until the first search) is filled in place, so a captured matching step keeps
    reading the same tensor. Searching reads the device (the boundary may); mUE does too."""

    def __init__(self, syn: SyntheticSet, proxy, udd_cfg, factor: int, seed: int, mean, std, classes: tuple, comm):
        self.syn, self.proxy, self.mean, self.std, self.comm, self.seed = syn, proxy, mean, std, comm, seed
        self.cfg = udd_cfg
        self.search = None
        if udd_cfg.policy != "none":
            self.search = RegionSearch(proxy, syn.size, factor, udd_cfg.region_size, udd_cfg.policy,
                                       udd_cfg.jitter_sigma, udd_cfg.jitter_draws, seed)
        self.factor = factor
        c0, c1 = classes
        self.classes = slice(c0, c1)
        self.frows = slice(c0 * syn.n_dec, c1 * syn.n_dec)  # this rank's formations
        self.labels = torch.arange(syn.K, device=syn.S.device).repeat_interleave(syn.n_dec)
        self.boxes = None
        self.policy_counts = {"response": 0, "jitter": 0}

    def due(self, outer: int) -> bool:
        return self.search is not None and outer % self.cfg.region_every == 0

    def search_regions(self, outer: int):
        """Choose each (own) formation's underutilized window on S as it is now (clamped)."""
        syn, f = self.syn, self.frows
        x = syn.decode(syn.S.detach(), self.classes).flatten(0, 1).clamp(0, 1)
        choice, used_jitter, _ = self.search.select(x, self.labels[f], self.mean, self.std,
                                                    rng.key(self.seed, "jitter", outer), first=f.start)
        new = self.search.boxes(choice, syn.dec_boxes[f, :2])
        check_boxes(new, syn.dec_src[f], syn.S.shape[0], "region boxes")
        if self.boxes is None:
            self.boxes = torch.zeros(syn.K * syn.n_dec, 4, dtype=torch.int64, device=syn.S.device)
        self.boxes[f] = new
        counts = torch.stack([used_jitter.sum(), (~used_jitter).sum()]).to(torch.int64)
        n_jit, n_resp = self.comm.all_reduce(counts, "policy counts").tolist()
        self.policy_counts["jitter"] += n_jit
        self.policy_counts["response"] += n_resp

    def load(self, boxes, counts):
        """Restore boxes and counts (Engine.load_state has checked that boxes come only with a search)."""
        if boxes is None:
            self.boxes = None
        elif self.boxes is None:
            self.boxes = boxes.to(self.syn.S.device)
        else:
            self.boxes.copy_(boxes)
        self.policy_counts = {k: int(v) for k, v in counts.items()}

    def share(self):
        total = sum(self.policy_counts.values())
        return {k: (v / total if total else 0.0) for k, v in self.policy_counts.items()}

    @torch.no_grad()
    def mue(self, images) -> float:
        """mUE of a stored set under the proxy: mean usage entropy of its formations' response maps."""
        syn = self.syn
        x = syn.decode(images.to(syn.S.dtype), slice(None)).flatten(0, 1).clamp(0, 1)
        fmap = self.proxy.feature_map((x - self.mean) / self.std)
        tile = math.ceil(syn.size / self.factor)  # the windows only shape the unused scores here
        _, _, ue = ops.response_map(fmap, self.proxy.classifier.weight, self.labels, tile,
                                    window_grid(tile, self.cfg.region_size))
        return float(ue.mean())
