"""Coreset selections of real images, the reference points a distilled set is measured against
(`--method herding|kcenter`; `--method random` is pipeline/driver.random_selection): per class, IPC real
training images chosen by their features under a network trained on the real data (UDD's proxy network: a
ConvNet trained with the evaluation's augmentation and CutMix, as IDC's herding network `conv3in_cut` was).

- herding (IDC's coreset.py `herding_select`, Welling 2009): greedily, the image whose addition brings the
  running mean of the chosen features closest to the class mean, no image twice;
- k-center (greedy, Sener & Savarese 2018): first the image nearest the class mean (a deterministic start),
  then repeatedly the image farthest from every image chosen so far.
"""
import torch

from .train import normalize


@torch.no_grad()
def features_of(model, data, idx, batch=500):
    """[n, D] penultimate features of training images idx (no augmentation), in float64."""
    model.eval()
    out = []
    for i in range(0, idx.shape[0], batch):
        x = normalize(data.to_float(idx[i:i + batch]), data.mean, data.std)
        out.append(model.features(x).double())
    return torch.cat(out)


def herding(features: torch.Tensor, k: int) -> list:
    """The positions (rows of features [n, D]) herding chooses, in order: at step t (from 0), the row nearest
    (t + 1) * mean - (sum of the rows chosen), ties to the lowest position, no row twice."""
    mean = features.mean(0, keepdim=True)
    chosen, total = [], torch.zeros_like(mean)
    taken = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    for t in range(k):
        dist = torch.linalg.vector_norm((t + 1) * mean - total - features, dim=1)
        dist = torch.where(taken, torch.inf, dist)
        i = int(torch.argmin(dist))
        chosen.append(i)
        taken[i] = True
        total = total + features[i]
    return chosen


def kcenter(features: torch.Tensor, k: int) -> list:
    """The positions greedy k-center chooses: the row nearest the mean, then each time the row whose distance
    to its nearest chosen row is largest (ties to the lowest position)."""
    mean = features.mean(0, keepdim=True)
    first = int(torch.argmin(torch.linalg.vector_norm(features - mean, dim=1)))
    chosen = [first]
    nearest = torch.linalg.vector_norm(features - features[first], dim=1)
    for _ in range(k - 1):
        i = int(torch.argmax(nearest))
        chosen.append(i)
        nearest = torch.minimum(nearest, torch.linalg.vector_norm(features - features[i], dim=1))
    return chosen


SELECTORS = {"herding": herding, "kcenter": kcenter}


def select(method: str, model, data, ipc: int):
    """(images float [K * ipc, C, H, W] in [0, 1], labels), class-major: each class's ipc images chosen by
    `method` from its training images' features under `model`."""
    chosen = []
    for c in range(data.info.num_classes):
        idx = data.class_indices[c, :data.host_counts[c]]
        pos = SELECTORS[method](features_of(model, data, idx), ipc)
        chosen.append(idx[torch.tensor(pos, device=idx.device)])
    idx = torch.cat(chosen)
    return data.to_float(idx), data.labels[idx]
