"""Artifacts and run directories.

Every file is written atomically (serialized in memory, written to a temporary file in the same
directory, then os.replace), so a run stopped at any moment leaves either the old file or the new
one, never half of one; files get the mode the umask allows, like any other file.

A run directory is complete or marked incomplete: a run writes the marker file INCOMPLETE before it
writes anything else there and removes it only after summary.json, the last artifact, is written.
A directory holding another run's files is refused unless the caller says to replace it (--force)
or to continue it (--resume).
"""
import datetime
import errno
import io
import json
import math
import os
import pickle
import re
import tempfile
from pathlib import Path

import torch

from .fields import boxes_ok, finite_numbers, is_int
from .version import __version__

INCOMPLETE = "INCOMPLETE"
# the files a run writes into its directory (plus eval_<arch>.json from `evaluate`)
RUN_FILES = ("checkpoint.pt", "distilled.pt", "summary.json", "grid.png", "curves.png", "report.html", "log.txt",
             INCOMPLETE)
# our temporary files: `.<artifact>.<random>.tmp` (see _atomic) and the writability probe
_TEMPORARY = re.compile(r"^\.(checkpoint\.pt|distilled\.pt|summary\.json|grid\.png|curves\.png|report\.html|INCOMPLETE"
                        r"|eval_\w+\.json)"
                        r"\.\w+\.tmp$|^\.write-test-\w+$")


class ArtifactError(RuntimeError):
    """A saved set that cannot be used: missing, unreadable or of the wrong structure."""


class WriteError(ArtifactError):
    """A file that could not be written (disk full, no permission); the message names the path."""


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _atomic(path: Path, data: bytes):
    """Write `data` to `path` atomically. The single place that writes an artifact's bytes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())  # mkstemp creates 0600
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_error_message(path, e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on the device (disk full or quota exceeded)"
    elif e.errno == errno.EFBIG:
        why = "file too large for this file system or the process's file-size limit"
    else:
        why = e.strerror or str(e)
    return f"cannot write {path}: {why}"


def _write(path, data: bytes):
    try:
        _atomic(Path(path), data)
    except OSError as e:
        raise WriteError(write_error_message(path, e)) from None


JSON_MAX_BYTES = 64 << 20  # a summary or an evaluation is kilobytes; more is not one


def read_json_object(path, what: str) -> dict:
    """A JSON object from a regular file of bounded size (never a device or a pipe read without end); `what`
    names what it should be ("a udd_fast summary") in the one-line refusal of anything else."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > JSON_MAX_BYTES:
            raise ArtifactError(f"{path} is not {what}: not a regular file of at most {JSON_MAX_BYTES >> 20} MiB")
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path} is not {what}: it holds a {type(obj).__name__}, not an object")
    return obj


def write_json(path, obj):
    _write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_torch(path, obj):
    buf = io.BytesIO()  # serialized first: a failed write is then an OSError, not a torch C++ error
    torch.save(obj, buf)
    _write(path, buf.getvalue())


def write_text(path, text: str):
    _write(path, text.encode())


# -- run directories ------------------------------------------------------------------------------

def run_files(path) -> list:
    """The names of a udd_fast run's files in directory `path` (sorted; [] when there is none)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir()
                  if p.name in RUN_FILES or (p.name.startswith("eval_") and p.name.endswith(".json")))


LOCK = ".udd_fast.lock"  # in a run directory: who holds it (pid, host), flock-ed while held


class RunDirLock:
    """One process's exclusive claim on a run directory, from before it checks anything there until it
    ends: an flock on DIR/.udd_fast.lock, a file naming the holder (pid, host, since when). The kernel
    drops the flock when its process ends however it ends, so a lock file that nobody holds is stale:
    the next process says so and takes it over. A directory the lock had to create is removed again,
    with the lock file, when nothing else was written there (a refused run leaves nothing)."""

    def __init__(self, path):
        self.path, self.fd, self.created, self.note = Path(path), None, [], None

    def acquire(self) -> "RunDirLock":
        import fcntl
        import socket

        d = self.path
        missing = []
        while not d.exists() and d != d.parent:
            missing.append(d)
            d = d.parent
        try:
            for m in reversed(missing):
                m.mkdir()
                self.created.append(m)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as e:
            self._remove_created()
            raise ArtifactError(f"output directory {self.path} is not writable: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 4096).decode(errors="replace").strip() or "an unknown process"
            os.close(fd)
            raise ArtifactError(f"output directory {self.path} is in use by another udd_fast process ({owner}); "
                                f"wait for it to end or choose another --out") from None
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        if previous:
            self.note = (f"took over the stale lock of {self.path} left by {previous} (that process is gone: "
                         f"nothing holds its lock)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{datetime.datetime.now().isoformat(timespec='seconds')}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is None:
            return
        try:
            (self.path / LOCK).unlink(missing_ok=True)  # while still held: no one can take a half-removed lock
        except OSError:
            pass  # a lock file left behind is stale once this process ends, and taken over
        os.close(self.fd)
        self.fd = None
        self._remove_created()

    def _remove_created(self):
        for d in reversed(self.created):  # the innermost first; only while empty
            try:
                d.rmdir()
            except OSError:
                break
        self.created = []

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def check_out_dir(path, force: bool = False, resume: bool = False) -> list:
    """Refuse an output directory we cannot or may not write into; nothing is created. Returns the
    previous run's files that a --force run replaces."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"output directory {path} is not writable: it is a file")
    up = path
    while not up.exists():
        up = up.parent
    if not up.is_dir():
        raise ArtifactError(f"output directory {path} is not writable: {up} is not a directory")
    if not os.access(up, os.W_OK | os.X_OK):
        raise ArtifactError(f"output directory {path} is not writable: no permission to write in {up}")
    found = run_files(path)
    if found and not (force or resume):
        resume_it = f", continue that run with --resume {path}" if "checkpoint.pt" in found else ""
        raise ArtifactError(f"output directory {path} holds another run ({', '.join(found)}); choose another "
                            f"--out{resume_it}, or replace it with --force")
    return found if force else []


def remove_stale_temporaries(path) -> list:
    """Delete the temporary files a killed run left in `path`; returns their names."""
    stale = sorted(p.name for p in Path(path).iterdir() if p.is_file() and _TEMPORARY.match(p.name))
    for name in stale:
        (Path(path) / name).unlink(missing_ok=True)
    return stale


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


def claim_run_dir(path, replace=(), note: str = "") -> list:
    """Make `path` this run's directory: create it, delete stale temporaries and the files in `replace`
    (a previous run's, with --force), then mark it INCOMPLETE. Returns the deleted temporaries."""
    path = ensure_writable_dir(path)
    try:
        stale = remove_stale_temporaries(path)
        for name in replace:
            (path / name).unlink(missing_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot clear output directory {path}: {e}") from None
    write_text(path / INCOMPLETE, "This udd_fast run is not complete: it is running, or it stopped before writing "
                                  "all its artifacts (log.txt says why). The marker goes when summary.json, the "
                                  f"last artifact, is written.\n{note}")
    return stale


def mark_complete(path):
    try:
        (Path(path) / INCOMPLETE).unlink(missing_ok=True)
    except OSError as e:
        raise WriteError(f"cannot remove {Path(path) / INCOMPLETE}: {e.strerror or e}") from None


# -- the distilled set -----------------------------------------------------------------------------

def write_bytes(path, data: bytes):
    """A file of given bytes (a picture, an export), written atomically."""
    _write(path, data)


def save_distilled(path, images, labels, factor, info, config: dict, region_views=None, facts=None, data_dir=None):
    """distilled.pt: stored images in [0,1] (float32), labels, factor, dataset facts, normalization,
    UDD's region views (`boxes` [M,4] with `region_src` [M], or None), the full config, the version, and
    what identifies the training data (`data`: udd_fast.data.data_facts) with its directory (built-ins).
    Written by result.write_run; read by Result.load alone (through load_distilled)."""
    write_torch(path, {
        "images": images.detach().float().clamp(0, 1).cpu(),
        "labels": labels.detach().long().cpu(),
        "factor": int(factor),
        "dataset": info.name,
        "dataset_info": {"name": info.name, "channels": info.channels, "size": info.size,
                         "num_classes": info.num_classes, "class_names": list(info.class_names)},
        "mean": list(info.mean),
        "std": list(info.std),
        "boxes": None if region_views is None else region_views[1].detach().long().cpu(),
        "region_src": None if region_views is None else region_views[0].detach().long().cpu(),
        "config": dict(config),
        "version": __version__,
        "data": None if facts is None else dict(facts),
        "data_dir": None if data_dir is None else str(data_dir),
    })
    try:
        for stale in Path(path).parent.glob("eval_*.json"):  # the results of the set this one replaced
            stale.unlink(missing_ok=True)
    except OSError as e:
        raise WriteError(f"cannot remove {stale}, an evaluation of the replaced set: {e.strerror or e}") from None


def _check_distilled(d, path):
    """Every field of a loaded distilled.pt: types, shapes, dtypes, ranges, finite values."""
    from .config import config_from_dict
    from .decode import factor_problem

    def bad(msg):
        return ArtifactError(f"{path}: {msg}: not a usable udd_fast distilled set")

    if not isinstance(d, dict):
        raise bad(f"holds a {type(d).__name__}, not a dict")
    need = ("images", "labels", "factor", "dataset", "dataset_info", "mean", "std")
    missing = [k for k in need if k not in d]
    if missing:
        raise bad(f"lacks {', '.join(missing)}")
    info = d["dataset_info"]
    if not (isinstance(info, dict) and is_int(info.get("num_classes")) and is_int(info.get("channels"))
            and is_int(info.get("size"))):
        raise bad("dataset_info must be a dict with integer num_classes, channels and size")
    k, c, s = info["num_classes"], info["channels"], info["size"]
    if k < 2 or c not in (1, 3) or s < 1:
        raise bad(f"dataset_info has {k} classes, {c} channels, size {s} (need >= 2 classes, 1 or 3 channels)")
    names = info.get("class_names")
    if not (isinstance(names, (list, tuple)) and len(names) == k and all(isinstance(n, str) for n in names)):
        raise bad(f"dataset_info.class_names must be {k} strings")
    if not (isinstance(d["dataset"], str) and d["dataset"]):
        raise bad("dataset must be a non-empty string")
    x, y = d["images"], d["labels"]
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise bad(f"images must be a floating-point tensor, found {type(x).__name__} {getattr(x, 'dtype', '')}")
    if x.dim() != 4 or x.shape[0] < 1 or tuple(x.shape[1:]) != (c, s, s):
        raise bad(f"images have shape {tuple(x.shape)}, expected (N, {c}, {s}, {s})")
    if not torch.isfinite(x).all():
        raise bad("images contain NaN or infinity")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise bad(f"images lie in [{float(x.min()):.4g}, {float(x.max()):.4g}], outside [0, 1]")
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise bad(f"labels must be an integer tensor, found {type(y).__name__} {getattr(y, 'dtype', '')}")
    if tuple(y.shape) != (x.shape[0],):
        raise bad(f"images {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise bad(f"labels lie in [{int(y.min())}, {int(y.max())}], outside [0, {k})")
    if not is_int(d["factor"]) or factor_problem(s, d["factor"]):
        raise bad(f"factor {d['factor']!r}: {factor_problem(s, d['factor']) if is_int(d['factor']) else 'not an integer'}")
    for key in ("mean", "std"):
        if not finite_numbers(d[key], c):
            raise bad(f"{key} must be {c} finite numbers")
    if not all(v > 0 for v in d["std"]):
        raise bad("std must be positive")
    boxes, src = d.get("boxes"), d.get("region_src")
    if boxes is not None or src is not None:
        ok = (boxes_ok(boxes, d["factor"] * math.ceil(s / d["factor"])) and isinstance(src, torch.Tensor)
              and not src.is_floating_point() and src.shape == (boxes.shape[0],)
              and int(src.min()) >= 0 and int(src.max()) < x.shape[0])
        if not ok:
            raise bad("region boxes are malformed")
    try:
        d["config"] = config_from_dict(d.get("config", {}), "its config")
    except ValueError as e:
        raise bad(str(e)) from None
    facts, data_dir = d.get("data"), d.get("data_dir")
    if facts is not None and not (isinstance(facts, dict) and isinstance(facts.get("fingerprint"), str)):
        raise bad("data (the training data's facts) must be a dict with a fingerprint")
    if data_dir is not None and not isinstance(data_dir, str):
        raise bad("data_dir must be a string")


def read_tensors(path, what: str, error=ArtifactError, allow=(), ours: bool = True):
    """torch.load of a udd_fast file (`ours`), or of another tool's (udd_fast.foreign): tensors and plain
    containers only, never pickled code; `allow` names the few data-only globals a foreign file may hold
    (numpy scalars). A file that is not one is refused in one line naming it (torch's advice to load it
    unsafely is never relayed)."""
    origin = " (not a udd_fast artifact)" if ours else ""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise error(f"{path} is not a readable {what}: it holds Python objects other than tensors, which udd_fast "
                    f"never unpickles{origin}") from None
    except Exception as e:  # truncated, random bytes, not a torch file
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise error(f"{path} is not a readable {what}{': not a udd_fast artifact' if ours else ''} "
                    f"({type(e).__name__}: {first})") from None


def load_distilled(path) -> dict:
    """Load and check a distilled.pt (a file, or a directory holding one); d["config"] is a Config.
    Result.load is its one caller: everything else reads a set through a Result."""
    path = Path(path)
    if path.is_dir():
        path = path / "distilled.pt"
    if not path.exists():
        raise ArtifactError(f"{path} does not exist (expected a distilled.pt or a run directory holding one)")
    d = read_tensors(path, "distilled set")
    _check_distilled(d, path)
    return d
