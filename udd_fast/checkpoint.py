"""Resumable runs: checkpoint.pt in the output directory holds the Distiller's state at an outer
boundary, the full config, the data's identity and location and the package version (written
atomically). Every field is checked on load, before any data is read.

No generator state is stored: every random draw is keyed by (seed, outer, inner, class, purpose) or
by the network-batch counter, so the counters in the state are enough (docs/method.md section 5). The UDD
proxy is not stored either; it comes back from its own cache (or is retrained, deterministically).
"""
import math
import sys
from pathlib import Path

import torch

from .version import __version__
from .artifacts import ArtifactError, read_tensors, write_torch
from .config import config_from_dict
from .data import data_mismatch
from .decode import decode_plan
from .engine import Engine
from .fields import boxes_ok, is_int

FILENAME = "checkpoint.pt"
# every key a checkpoint of this FORMAT holds
KEYS = ("format", "version", "config", "data", "dataset_arg", "data_dir", "no_download", "state", "history")
STATE_KEYS = Engine.STATE_KEYS  # what the engine's state holds
FORMAT = "udd_fast.checkpoint/1"
_FACT_INTS = ("num_train", "num_classes", "channels", "size")  # positive; num_test may be 0 (data without a test split)


class CheckpointError(ArtifactError):
    """A checkpoint that cannot be resumed: missing, unreadable, corrupt or not matching this run."""


def save_checkpoint(out_dir, state: dict, config: dict, facts: dict, dataset_arg: str, data_dir=None,
                    no_download=False, history=None) -> Path:
    """history: the run's curves so far ({"loss"|"mue"|"accuracy": [[outer, value], ...]}), so a resumed
    run's curves.png shows the whole run."""
    path = Path(out_dir) / FILENAME
    write_torch(path, {"format": FORMAT, "version": __version__, "config": dict(config), "data": dict(facts),
                       "dataset_arg": str(dataset_arg), "data_dir": None if data_dir is None else str(data_dir),
                       "no_download": bool(no_download), "state": state,
                       "history": {k: [[int(o), float(v)] for o, v in pts] for k, pts in (history or {}).items()}})
    return path


def load_checkpoint(run_dir) -> dict:
    """Load <run_dir>/checkpoint.pt (or the file itself) and check every field; ck["config"] is a Config."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / FILENAME
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: nothing to resume (expected a run directory holding "
                              f"{FILENAME})")
    ck = read_tensors(path, "checkpoint", CheckpointError)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        found = repr(ck.get("format")) if isinstance(ck, dict) else f"a {type(ck).__name__}, not a dict"
        raise CheckpointError(f"{path} is not a udd_fast checkpoint of format {FORMAT} (found: {found})")
    unknown = sorted(map(str, set(ck) - set(KEYS)))
    if isinstance(ck.get("state"), dict):
        unknown += [f"state.{k}" for k in sorted(map(str, set(ck["state"]) - set(STATE_KEYS)))]
    if unknown:  # a newer udd_fast wrote them: said, not silently dropped
        print(f"warning: {path} holds {', '.join(unknown)}, which this udd_fast {__version__} does not know "
              f"(written by udd_fast {ck.get('version')}); resuming without them", file=sys.stderr)
    missing = [k for k in ("version", "config", "data", "dataset_arg", "state") if k not in ck]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    try:
        ck["config"] = config_from_dict(ck["config"], "config")
        _check_fields(ck)
        check_state(ck["state"], ck["config"], ck["data"])
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}; the checkpoint is damaged or was edited: it cannot be resumed") from None
    ck["path"] = str(path)
    return ck


def _check_fields(ck):
    if not isinstance(ck["version"], str) or not isinstance(ck["dataset_arg"], str) or not ck["dataset_arg"]:
        raise ValueError("version and dataset_arg must be strings")
    for key in ("data_dir",):
        if ck.get(key) is not None and not isinstance(ck[key], str):
            raise ValueError(f"{key} must be a string")
    if not isinstance(ck.get("no_download", False), bool):
        raise ValueError("no_download must be true or false")
    hist = ck.get("history") or {}
    if not (isinstance(hist, dict) and all(
            k in ("loss", "mue", "accuracy") and isinstance(pts, list)
            and all(isinstance(p, list) and len(p) == 2 and is_int(p[0]) and isinstance(p[1], float) for p in pts)
            for k, pts in hist.items())):
        raise ValueError("history must map loss/mue/accuracy to lists of [outer, value]")
    facts = ck["data"]
    if not isinstance(facts, dict) or not isinstance(facts.get("fingerprint"), str) \
            or not isinstance(facts.get("name"), str):
        raise ValueError("data (the training data's facts) must be a dict with a name and a fingerprint")
    bad = [k for k in _FACT_INTS if not (is_int(facts.get(k)) and facts[k] >= 1)]
    if bad:
        raise ValueError(f"data facts {', '.join(bad)} must be positive integers")
    if not (is_int(facts.get("num_test")) and facts["num_test"] >= 0):
        raise ValueError("data fact num_test must be a non-negative integer")


def check_state(st, cfg, facts):
    """The engine's state (engine.Engine.state()): keys, types, shapes against the config and the
    data facts, finite values, counters in range. Raises ValueError."""
    if not isinstance(st, dict) or any(k not in st for k in STATE_KEYS):
        raise ValueError(f"state must be a dict with {', '.join(STATE_KEYS)}")
    shape = (facts["num_classes"] * cfg.run.ipc, facts["channels"], facts["size"], facts["size"])
    for k in ("S", "buf", "pending"):
        t = st[k]
        if t is None and k == "pending":
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or tuple(t.shape) != shape:
            raise ValueError(f"state {k} must be a float tensor of shape {shape}, found "
                             f"{type(t).__name__} {tuple(getattr(t, 'shape', ()))}")
        if not torch.isfinite(t).all():
            raise ValueError(f"state {k} contains NaN or infinity")
    done, net_batch = st["outer_done"], st["net_batch"]
    if not (is_int(done) and 0 <= done <= cfg.match.iterations):
        raise ValueError(f"state outer_done {done!r} is outside [0, {cfg.match.iterations}] (the run's iterations)")
    # a network update draws at most n_data batches (>= 1 image each)
    most = done * cfg.match.inner_loop * cfg.net.n_data
    if not (is_int(net_batch) and 0 <= net_batch <= most):
        raise ValueError(f"state net_batch {net_batch!r} is outside [0, {most}] for {done} outer iterations")
    counts = st["policy_counts"]
    if not (isinstance(counts, dict) and set(counts) == {"response", "jitter"}
            and all(is_int(v) and v >= 0 for v in counts.values())):
        raise ValueError("state policy_counts must hold non-negative integer counts of response and jitter")
    loss = st["last_loss"]
    if not isinstance(loss, float) or (done > 0 and not math.isfinite(loss)):
        raise ValueError(f"state last_loss {loss!r} must be a finite number after an outer iteration")
    boxes = st["region_boxes"]
    if boxes is not None:
        n = facts["num_classes"] * decode_plan(cfg.run.ipc, facts["size"], cfg.match.factor, "meta",
                                               cfg.match.decode_type or "single", cfg.match.batch_syn_max)[0].shape[0]
        side = cfg.match.factor * math.ceil(facts["size"] / cfg.match.factor)
        if not boxes_ok(boxes, side, rows=n):
            raise ValueError(f"state region_boxes must be {n} integer boxes inside the {side}-pixel stored images")
        if cfg.run.method != "udd" or cfg.udd.policy == "none":
            raise ValueError("state has region boxes, but the run's config searches no regions")


def check_data(ck: dict, facts: dict):
    """Refuse a checkpoint made on other data (`facts`: udd_fast.data.data_facts of the data here)."""
    diff = data_mismatch(ck["data"], facts)
    if diff:
        raise CheckpointError(f"{ck['path']} was made on other data: " + "; ".join(diff))
