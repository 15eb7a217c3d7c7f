"""The full-data reference point (`--method full`): IDC's evaluation protocol with the whole real training set
as the training set, the accuracy a distilled set's is measured against (its recovered share, udd_fast/scores.py);
and the teacher of soft-label evaluations (`evaluate --soft-labels`): that protocol's first run on the full data,
the network itself kept.

Training on all the data is the costliest evaluation there is, so its result is cached on disk under
everything that decides it: the dataset and its fingerprint, the architecture, epochs, runs, seed, every
evaluation setting and the version. A cache file that is corrupt or whose key does not match is recomputed
with a warning, never used.
"""
import dataclasses
import hashlib
import json
import time
import warnings
from pathlib import Path

from .artifacts import WriteError, read_tensors, write_json
from .augment import Strategy
from .config import EvalConfig
from .data import cache_dir, data_fingerprint
from .logs import quiet
from . import rng
from .artifacts import write_torch
from .models import make_model
from .protocol import RealImages, train_and_test_real, train_once
from .version import __version__

# what the cache keeps of train_and_test's result (the rest says how it was measured, and is in the key)
KEPT = ("accuracy_runs", "accuracy_mean", "accuracy_std", "best_runs", "best_mean", "eval_seconds", "num_train",
        "num_test", "grouped")


def default_cache_dir() -> Path:
    return cache_dir("reference")


def reference_key(data, ev: EvalConfig, seed: int) -> dict:
    """What decides the full-data accuracy."""
    fields = {f.name: getattr(ev, f.name) for f in dataclasses.fields(ev)
              if f.name not in ("eval_group", "eval_every", "eval_region_views")}  # none of them changes it
    fields["eval_aug"] = str(Strategy.parse(ev.eval_aug))
    return {"dataset": data.info.name, "fingerprint": data_fingerprint(data), "seed": int(seed),
            "version": __version__, **fields}


def _file_for(cache_dir: Path, key: dict, kind: str = "full", suffix: str = ".json") -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() else "_" for ch in key["dataset"])[-40:]
    return Path(cache_dir) / f"{kind}-{safe}-{key['eval_arch']}-{key['eval_epochs']}ep-{digest}{suffix}"


def _read(path: Path, key: dict) -> dict:
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict) or saved.get("key") != key:
        raise ValueError(f"its key {saved.get('key') if isinstance(saved, dict) else None} != {key}")
    res = saved.get("result")
    if not isinstance(res, dict) or set(res) != set(KEPT):
        raise ValueError(f"its result holds {sorted(res) if isinstance(res, dict) else type(res).__name__}, "
                         f"not {sorted(KEPT)}")
    runs = res["accuracy_runs"]
    if not (isinstance(runs, list) and len(runs) == key["eval_runs"]
            and all(isinstance(a, (int, float)) and 0 <= a <= 100 for a in runs)):
        raise ValueError(f"its accuracy_runs {runs!r} are not {key['eval_runs']} accuracies in [0, 100]")
    return res


def full_data_accuracy(data, ev: EvalConfig, seed: int, cache_dir=None, progress=True, log=quiet) -> dict:
    """IDC's protocol (`ev`) trained on the whole real training set: train_and_test's result, with "source"
    ("cached" or "trained") and "cache" (the file). Read from the cache when there, else trained and cached."""
    key = reference_key(data, ev, seed)
    path = _file_for(Path(cache_dir) if cache_dir else default_cache_dir(), key)
    out = {"arch": ev.eval_arch, "epochs": ev.eval_epochs, "runs": ev.eval_runs, "validations": ev.eval_validations,
           "augmentation": key["eval_aug"], "cutmix": bool(ev.eval_cutmix), "batch": ev.eval_batch, "lr": ev.eval_lr,
           "weight_decay": ev.eval_wd, "cutmix_p": ev.eval_cutmix_p, "cache": str(path)}
    t0 = time.time()
    if path.exists():
        try:
            res = _read(path, key)
            log(f"full-data reference loaded from cache {path} (trained in {res['eval_seconds']:.1f} s)")
            # eval_seconds: this call's time; the training's own stays beside it
            return {**out, **res, "source": "cached", "trained_seconds": res["eval_seconds"],
                    "eval_seconds": time.time() - t0}
        except (OSError, ValueError) as e:  # corrupt or another key's: never used
            warnings.warn(f"full-data reference cache {path} is unusable ({type(e).__name__}: {e}); retraining",
                          stacklevel=2)
            log(f"warning: full-data reference cache {path} unusable ({type(e).__name__}); retraining")
    log(f"training on the full training set ({data.images.shape[0]} images): {ev.eval_arch}, {ev.eval_epochs} "
        f"epochs x {ev.eval_runs} runs")
    models = []  # each run's network (runs one by one): run 0 is the soft labels' teacher
    res = {k: v for k, v in train_and_test_real(data, ev, seed, progress, trained=models).items() if k in KEPT}
    if models:
        path_t, key_t = _teacher_file(data, ev, seed, cache_dir)
        _cache_teacher(path_t, key_t, models[0], res["accuracy_runs"][0], log)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "result": res})
        log(f"full-data reference cached at {path}")
    except (OSError, WriteError) as e:  # a cache: the run goes on without it
        warnings.warn(f"could not cache the full-data reference at {path}: {e}", stacklevel=2)
        log(f"warning: could not cache the full-data reference ({e})")
    return {**out, **res, "source": "trained", "trained_seconds": res["eval_seconds"]}


def teacher_network(data, ev: EvalConfig, seed: int, cache_dir=None, progress=True, log=quiet):
    """The soft labels' teacher: ev.eval_arch trained on the whole real training set with IDC's protocol
    (`ev`), run 0 of full_data_accuracy's runs (the same keyed initialization and batches, so the same network
    and accuracy). Returns (network in eval mode on data.device, facts: arch, epochs, test accuracy, source,
    cache). Cached as a state dict, read back as tensors only."""
    path, key = _teacher_file(data, ev, seed, cache_dir)
    info = data.info
    facts = {"arch": ev.eval_arch, "epochs": ev.eval_epochs, "cache": str(path)}
    if path.exists():
        try:
            saved = read_tensors(path, "a cached teacher network")
            if not isinstance(saved, dict) or saved.get("key") != key:
                raise ValueError(f"its key {saved.get('key') if isinstance(saved, dict) else None} != {key}")
            model = make_model(ev.eval_arch, info.num_classes, info.channels, info.size)
            model.load_state_dict(saved["state_dict"])
            log(f"teacher network loaded from cache {path}")
            return model.to(data.device).eval(), {**facts, "test_accuracy": float(saved["test_accuracy"]),
                                                  "source": "cached"}
        except Exception as e:  # corrupt or another key's: never used
            warnings.warn(f"teacher cache {path} is unusable ({type(e).__name__}: {e}); retraining", stacklevel=2)
            log(f"warning: teacher cache {path} unusable ({type(e).__name__}); retraining")
    log(f"training the teacher: {ev.eval_arch}, {ev.eval_epochs} epochs on the full training set "
        f"({data.images.shape[0]} images)")
    trained = []
    acc, _ = train_once(RealImages(data), data.labels, data, ev, rng.key(seed, "eval", ev.eval_arch, 0), progress,
                        desc="teacher", trained=trained)
    _cache_teacher(path, key, trained[0], acc, log)
    return trained[0], {**facts, "test_accuracy": acc, "source": "trained"}


def _teacher_file(data, ev: EvalConfig, seed: int, cache_dir):
    """(cache file, key) of the teacher: the full-data reference's key without the number of runs."""
    key = {k: v for k, v in reference_key(data, ev, seed).items() if k != "eval_runs"}
    return _file_for(Path(cache_dir) if cache_dir else default_cache_dir(), key, "teacher", ".pt"), key


def _cache_teacher(path: Path, key: dict, model, acc: float, log):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_torch(path, {"key": key, "test_accuracy": acc,
                           "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}})
        log(f"teacher network cached at {path}")
    except (OSError, WriteError) as e:  # a cache: the evaluation goes on without it
        warnings.warn(f"could not cache the teacher network at {path}: {e}", stacklevel=2)
        log(f"warning: could not cache the teacher network ({e})")
