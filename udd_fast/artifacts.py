"""Artifacts written atomically (temporary file in the same directory, then os.replace), so a run
stopped at any moment leaves either the old file or the new one, never half of one."""
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import __version__


class ArtifactError(RuntimeError):
    """A saved set that cannot be used: missing, unreadable or of the wrong structure."""


def _atomic(path: Path, write):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    _atomic(path, lambda fh: fh.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def write_torch(path, obj):
    _atomic(path, lambda fh: torch.save(obj, fh))


def ensure_writable_dir(path) -> Path:
    """Create the output directory and prove it is writable before any long work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as e:
        raise ArtifactError(f"output directory {path} is not writable: {e.strerror or e}") from None
    return path


def grid_image(images: torch.Tensor, labels: torch.Tensor, num_classes: int, max_cols: int = 10, pad: int = 2):
    """uint8 HxWxC array: one row per class, that class's stored images left to right."""
    images = images.detach().float().clamp(0, 1).cpu()
    labels = labels.cpu()
    _, c, h, w = images.shape
    per_class = [images[labels == k][:max_cols] for k in range(num_classes)]
    cols = max(1, max(len(p) for p in per_class))
    canvas = torch.ones(c, num_classes * (h + pad) + pad, cols * (w + pad) + pad)
    for k, imgs in enumerate(per_class):
        for j, img in enumerate(imgs):
            y, x = pad + k * (h + pad), pad + j * (w + pad)
            canvas[:, y:y + h, x:x + w] = img
    arr = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return arr[:, :, 0] if c == 1 else arr


def write_grid(path, images, labels, num_classes):
    from PIL import Image

    arr = grid_image(images, labels, num_classes)
    _atomic(path, lambda fh: Image.fromarray(np.ascontiguousarray(arr)).save(fh, format="PNG"))


def save_distilled(path, images, labels, factor, info, config: dict, regions=None):
    """distilled.pt: stored images in [0,1] (float32), labels, factor, dataset facts, normalization,
    region boxes (`boxes` [M,4] with `region_src` [M], or None), the full config and the version."""
    write_torch(path, {
        "images": images.detach().float().clamp(0, 1).cpu(),
        "labels": labels.detach().long().cpu(),
        "factor": int(factor),
        "dataset": info.name,
        "dataset_info": {"name": info.name, "channels": info.channels, "size": info.size,
                         "num_classes": info.num_classes, "class_names": list(info.class_names)},
        "mean": list(info.mean),
        "std": list(info.std),
        "boxes": None if regions is None else regions[1].detach().long().cpu(),
        "region_src": None if regions is None else regions[0].detach().long().cpu(),
        "config": dict(config),
        "version": __version__,
    })


def load_distilled(path) -> dict:
    """Load and check a distilled.pt (a file, or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "distilled.pt"
    if not path.exists():
        raise ArtifactError(f"{path} does not exist (expected a distilled.pt or a run directory holding one)")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or not a torch file
        raise ArtifactError(f"{path} is not a readable distilled set ({type(e).__name__}: {e})") from None
    need = ("images", "labels", "factor", "dataset", "dataset_info", "mean", "std")
    missing = [k for k in need if not isinstance(d, dict) or k not in d]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}: not a udd_fast distilled set")
    x, y = d["images"], d["labels"]
    if x.dim() != 4 or y.shape != (x.shape[0],):
        raise ArtifactError(f"{path}: images {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
    if not torch.isfinite(x).all():
        raise ArtifactError(f"{path}: images contain NaN or infinity")
    boxes, src = d.get("boxes"), d.get("region_src")
    if boxes is not None:
        ok = (src is not None and boxes.dim() == 2 and boxes.shape[1] == 4 and src.shape == (boxes.shape[0],)
              and int(src.min()) >= 0 and int(src.max()) < x.shape[0] and bool((boxes[:, 2:] > boxes[:, :2]).all()))
        if not ok:
            raise ArtifactError(f"{path}: region boxes are malformed")
    return d
