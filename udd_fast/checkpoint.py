"""Resumable runs: checkpoint.pt in the output directory holds the Distiller's state at an outer
boundary, the full config, the data's identity and the package version (written atomically).

No generator state is stored: every random draw is keyed by (seed, outer, inner, class, purpose) or
by the network-batch counter, so the counters in the state are enough (method section 5). The UDD
proxy is not stored either; it comes back from its own cache (or is retrained, deterministically).
"""
from pathlib import Path

import torch

from . import __version__
from .artifacts import ArtifactError, write_torch
from .proxy import data_fingerprint

FILENAME = "checkpoint.pt"
FORMAT = "udd_fast.checkpoint/1"


class CheckpointError(ArtifactError):
    """A checkpoint that cannot be resumed: missing, unreadable, corrupt or not matching this run."""


def data_facts(data) -> dict:
    """What identifies the training data (the fingerprint hashes images and labels: ~0.1 s for MNIST)."""
    info = data.info
    return {"name": info.name, "num_train": int(data.images.shape[0]), "num_test": int(data.test_images.shape[0]),
            "num_classes": info.num_classes, "channels": info.channels, "size": info.size,
            "fingerprint": data_fingerprint(data)}


def save_checkpoint(out_dir, state: dict, config: dict, facts: dict, dataset_arg: str) -> Path:
    path = Path(out_dir) / FILENAME
    write_torch(path, {"format": FORMAT, "version": __version__, "config": dict(config), "data": dict(facts),
                       "dataset_arg": str(dataset_arg), "state": state})
    return path


def load_checkpoint(run_dir) -> dict:
    """Load and check the structure of <run_dir>/checkpoint.pt (or the file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / FILENAME
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: nothing to resume (expected a run directory holding "
                              f"{FILENAME})")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or not a torch file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a udd_fast checkpoint (format {FORMAT})")
    missing = [k for k in ("version", "config", "data", "dataset_arg", "state") if k not in ck]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    ck["path"] = str(path)
    return ck


def check_data(ck: dict, facts: dict):
    """Refuse a checkpoint made on other data."""
    saved = ck["data"]
    diff = [k for k in facts if saved.get(k) != facts[k]]
    if diff:
        raise CheckpointError(f"{ck['path']} was made on other data: " +
                              "; ".join(f"{k} {saved.get(k)!r} there, {facts[k]!r} here" for k in diff))
