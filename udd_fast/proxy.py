"""UDD's proxy network: a ConvNet (depth by resolution: ConvNet-3 up to 32 px) trained on the real training set with the evaluation
augmentation, cached on disk under (dataset, data fingerprint, architecture, epochs, seed,
augmentation, CutMix, version).

A cache file that is corrupt or whose key does not match is retrained with a warning, never used.
"""
import hashlib
import math
import warnings
from pathlib import Path

import torch

from . import logs, rng
from .version import __version__
from .artifacts import WriteError, write_torch
from .augment import Strategy
from .data import cache_dir, data_fingerprint
from .logs import quiet
from .models import ConvNet, convnet_depth
from .sampling import EpochBatches
from .train import fit, normalize


def default_cache_dir() -> Path:
    return cache_dir("proxy")


def proxy_key(data, epochs: float, seed: int, strategy: str, use_cutmix: bool, arch: str = "convnet") -> dict:
    return {"dataset": data.info.name, "fingerprint": data_fingerprint(data), "arch": arch,
            "epochs": float(epochs), "seed": int(seed), "augmentation": str(Strategy.parse(strategy)),
            "cutmix": bool(use_cutmix), "version": __version__}


def _file_for(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() else "_" for ch in key["dataset"])[-40:]
    return Path(cache_dir) / f"{safe}-{digest}.pt"


def new_proxy(info, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.key(seed, "proxy_init") & 0x7FFF_FFFF_FFFF_FFFF)
        return ConvNet(info.num_classes, info.channels, info.size, depth=convnet_depth(info.size))


def train_proxy(data, epochs: float, seed: int, strategy: str, use_cutmix: bool, progress=True):
    """Train on the real training set: SGD 0.01/0.9/5e-4, batch 64, lr x0.2 at 2/3 and 5/6 of the
    batches, per-sample evaluation augmentation. `epochs` may be fractional (smoke runs)."""
    model = new_proxy(data.info, seed).to(data.device).train()
    batches = EpochBatches(data.images.shape[0], 64, seed, "proxy_batches", data.device)
    steps = max(1, math.ceil(epochs * batches.per_epoch))
    bar = logs.bar(steps, "proxy", progress, leave=False)

    def show(b, loss):
        bar.update(1)
        if b % 50 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")

    fit(model, lambda idx: (normalize(data.to_float(idx), data.mean, data.std), data.labels[idx]), batches, steps,
        data.info.size, Strategy.parse(strategy), use_cutmix, lambda b: rng.key(seed, "proxy_step", b),
        schedule="step", on_step=show)
    bar.close()
    return model.eval()


def load_or_train_proxy(data, epochs: float, seed: int, strategy: str, use_cutmix: bool, cache_dir=None,
                        progress=True, log=quiet):
    """The cached proxy for this key, else a freshly trained one (then cached). Returns (model, how)."""
    key = proxy_key(data, epochs, seed, strategy, use_cutmix)
    path = _file_for(cache_dir or default_cache_dir(), key)
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(saved, dict) or saved.get("key") != key:
                raise ValueError(f"its key {saved.get('key') if isinstance(saved, dict) else None} != {key}")
            model = new_proxy(data.info, seed)
            model.load_state_dict(saved["state_dict"])
            log(f"proxy network loaded from cache {path}")
            return model.to(data.device).eval(), "cached"
        except Exception as e:  # corrupt or mismatched: never use it
            warnings.warn(f"proxy cache {path} is unusable ({type(e).__name__}: {e}); retraining", stacklevel=2)
            log(f"warning: proxy cache {path} unusable ({type(e).__name__}); retraining")
    log(f"training the proxy network: {epochs} epochs on {data.images.shape[0]} real images")
    model = train_proxy(data, epochs, seed, strategy, use_cutmix, progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_torch(path, {"key": key, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}})
        log(f"proxy network cached at {path}")
    except (OSError, WriteError) as e:  # a cache: the run goes on without it
        warnings.warn(f"could not cache the proxy network at {path}: {e}", stacklevel=2)
        log(f"warning: could not cache the proxy network ({e})")
    return model, "trained"
