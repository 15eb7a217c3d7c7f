"""`python -m udd_fast.export DIR --format npz|folder|pt --out PATH [--force]`: what a model trains on.

DIR is a run directory holding distilled.pt, or the file itself. The exported set is every stored
image decoded into its factor^2 formations, plus UDD's region views where the run evaluates with them
(`Result.training_set`, what udd_fast's evaluation trains on), float32 NCHW in [0, 1], with int64
labels. Formats:

  npz     `images` float32 (N, C, H, W) in [0, 1], `labels` int64 (N,), `class_names` str (K,),
          `factor` int64 (), `dataset` str (); numpy reads it without pickle. It is also user data
          as it stands (`--dataset PATH.npz`): the reader takes float images in [0, 1] as
          round(x * 255) and ignores `factor` and `dataset`, so no uint8 copy is stored.
  folder  PATH/<kk>-<class>/<iiiii>.png, uint8 round(x * 255), mode L (1 channel) or RGB. The class
          folders are numbered so that their sorted order is the label order (udd_fast's folder
          reader, like ImageFolder, numbers the sorted folders); <iiiii> is the image's row in the
          npz/pt exports. PATH/export.json keeps the class names, factor and dataset.
  pt      a tuple (images, labels) saved by torch.save; torch.load(PATH, weights_only=True) reads it.

The set has no test split: loaded as user data, every 10th image of a class is held out as test.
All checks run before anything is written; the output appears at PATH complete or not at all (a file
by os.replace, a folder built in a temporary sibling and renamed), and --force replaces the old one
only once the new one is complete. Bad input: a one-line message on stderr, exit status 2.
"""
import argparse
import contextlib
import glob
import io
import os
import re
import secrets
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .artifacts import (RUN_FILES, ArtifactError, RunDirLock, WriteError, ensure_writable_dir, run_files, write_bytes,
                        write_error_message, write_json, write_torch)
from .logs import sigterm_as_interrupt
from .result import Result
from .version import __version__

FORMATS = ("npz", "folder", "pt")
MARKER = "export.json"  # marks a folder export: --force replaces no other directory


def decoded_set(result: Result):
    """(images float32 [N, C, H, W] in [0, 1], labels int64 [N]): the stored images' formations, then
    UDD's region views when the run evaluates with them (its eval_region_views)."""
    x, y = result.training_set()
    # bilinear resampling can land one float step outside [0, 1]; the npz reader refuses that
    return x.clamp(0, 1).contiguous(), y.contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """round(x * 255) in float64, exactly as udd_fast's npz reader converts float images."""
    return np.rint(images.double().numpy() * 255.0).astype(np.uint8)


def class_folders(class_names) -> list:
    """Folder names whose sorted order is the label order: `{k:02d}-{name}`, digits widened for >= 100
    classes, the name reduced to characters every file system takes."""
    width = max(2, len(str(len(class_names) - 1)))
    return [f"{k:0{width}d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[:64]}" for k, name in enumerate(class_names)]


NPZ_KEYS = ("images", "labels", "class_names", "factor", "dataset")  # what an npz export holds, exactly


def _earlier_export(path: Path, fmt: str) -> bool:
    """Whether the file at `path` is what an export of format `fmt` writes (read without pickle): an npz
    of exactly NPZ_KEYS, or a pt of (float images [N, C, H, W], integer labels [N])."""
    try:
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as z:
                return sorted(z.files) == sorted(NPZ_KEYS)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a zip, not a torch file, a pickle, ...: not ours
        return False
    return (isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)
            and obj[0].dim() == 4 and obj[0].is_floating_point() and obj[1].dim() == 1
            and not obj[1].is_floating_point() and obj[0].shape[0] == obj[1].shape[0])


def check_target(out, fmt: str, force: bool = False, source_dir=None):
    """Refuse a PATH we may not or cannot write, before anything is written. Whatever --force says, an
    export never writes over the run directory it reads (`source_dir`) or any file of a run directory;
    --force replaces only an earlier export of the same format."""
    out = Path(out)
    where = out.resolve()
    if source_dir is not None and where in (Path(source_dir).resolve(), Path(source_dir).resolve() / "distilled.pt"):
        raise ArtifactError(f"--out {out} is the set being exported ({source_dir}): choose another --out")
    if (where.name in RUN_FILES or re.fullmatch(r"eval_\w+\.json", where.name)) and run_files(where.parent):
        raise ArtifactError(f"--out {out} is a file of the run directory {where.parent} (it holds "
                            f"{', '.join(run_files(where.parent))}): an export never replaces one; choose another --out")
    if out.exists() or out.is_symlink():
        if not force:
            raise ArtifactError(f"{out} already exists; pass --force to replace it")
        if fmt == "folder":
            if not out.is_dir() or out.is_symlink() or not ((out / MARKER).is_file() or not any(out.iterdir())):
                raise ArtifactError(f"{out} is not an earlier folder export (it holds no {MARKER}); --force "
                                    f"replaces only those: remove it yourself or choose another --out")
        elif out.is_dir():
            raise ArtifactError(f"{out} is a directory; --force replaces only a file with --format {fmt}")
        elif not _earlier_export(out, fmt):
            raise ArtifactError(f"{out} is not an earlier {fmt} export (not what --format {fmt} writes); --force "
                                f"replaces only those: remove it yourself or choose another --out")
    if not out.parent.is_dir():
        raise ArtifactError(f"cannot write {out}: {out.parent} is not an existing directory")
    try:
        ensure_writable_dir(out.parent)  # a probe file proves it, as os.access cannot (root, read-only mounts)
    except ArtifactError as e:
        raise ArtifactError(f"cannot write {out}: {e}") from None


def _npz_bytes(x, y, r: Result) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=x.numpy(), labels=y.numpy(), class_names=np.array(r.class_names, dtype=str),
                        factor=np.int64(r.factor), dataset=np.array(r.info.name, dtype=str))
    return buf.getvalue()


def _remove_stale_folders(out: Path):
    """The half-built folders of earlier exports to `out` whose process is gone (killed before its cleanup)."""
    for tmp in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        m = re.fullmatch(rf"\.{re.escape(out.name)}\.(\d+)-[0-9a-f]+\.tmp", tmp.name)
        if m is None or not tmp.is_dir():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its export still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        shutil.rmtree(tmp, ignore_errors=True)


def _write_folder(out: Path, x, y, r: Result):
    """Build the tree in a temporary sibling, then rename it into place (an old export goes last)."""
    from PIL import Image

    _remove_stale_folders(out)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"  # the pid tells a later export whether its maker is gone
    tmp, old = out.parent / f".{out.name}.{token}.tmp", None
    done = False
    try:
        tmp.mkdir()  # not mkdtemp: that makes it 0700, and the export should get the umask's mode
        dirs = [tmp / name for name in class_folders(r.class_names)]
        for folder in dirs:
            folder.mkdir()
        width = max(5, len(str(len(y) - 1)))  # so that sorted file order is row order
        for i, (img, k) in enumerate(zip(to_uint8(x), y.tolist())):
            pixels = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)  # mode L or RGB
            Image.fromarray(pixels).save(dirs[k] / f"{i:0{width}d}.png")
        write_json(tmp / MARKER, {"dataset": r.info.name, "factor": r.factor, "num_images": len(y),
                                  "class_names": list(r.class_names),
                                  "folders": [p.name for p in dirs], "version": __version__})
        if out.exists() or out.is_symlink():  # --force (check_target allowed it)
            old = out.parent / f".{out.name}.{token}.old"
            out.rename(old)
        tmp.rename(out)
        done = True
    except OSError as e:
        raise WriteError(write_error_message(out, e)) from None
    finally:
        if old is not None and not done and not out.exists():
            old.rename(out)  # the new export failed: the old one comes back
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and done:
            shutil.rmtree(old, ignore_errors=True)


def export_set(result, fmt: str, out, force: bool = False) -> dict:
    """Export a distilled set (a Result, or a path for Result.load) to `out` as `fmt` (npz, folder or
    pt); returns what was written. Raises ArtifactError (WriteError) on bad input or a failed write,
    before writing or with nothing left behind."""
    if fmt not in FORMATS:
        raise ArtifactError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    r = result if isinstance(result, Result) else Result.load(result)
    out = Path(out)
    parent = out.absolute().parent
    # writing into a run directory: no other process may be writing that run meanwhile
    with RunDirLock(parent) if run_files(parent) else contextlib.nullcontext():
        check_target(out, fmt, force, r.run_dir)
        x, y = decoded_set(r)
        if fmt == "npz":
            write_bytes(out, _npz_bytes(x, y, r))
        elif fmt == "pt":
            write_torch(out, (x, y))
        else:
            _write_folder(out, x, y, r)
    return {"path": str(out), "format": fmt, "num_images": int(x.shape[0]), "shape": list(x.shape[1:]),
            "num_stored": int(r.images.shape[0]), "factor": r.factor,
            "num_region_views": int(x.shape[0]) - int(r.training_set(with_region_views=False)[0].shape[0]),
            "num_classes": r.info.num_classes}


def _parser():
    p = argparse.ArgumentParser(prog="python -m udd_fast.export",
                                description="Export the decoded training set of a distilled set.")
    p.add_argument("path", help="a run directory holding distilled.pt, or the file itself")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="the file (npz, pt) or folder to write")
    p.add_argument("--force", action="store_true", help="replace an earlier export of the same format (never any "
                                                         "other file, and never a file of a run directory)")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            return _main(args)
    except KeyboardInterrupt:  # the output is written whole or not at all: nothing half-written is left
        print(f"interrupted: nothing was written to {args.out}", file=sys.stderr)
        return 130


def _main(args):
    try:
        r = Result.load(args.path, allow_incomplete=True)  # whole (written atomically), said to be maybe not the last
        if r.incomplete:  # its distilled.pt is whole (written atomically), maybe not the last
            run_dir = Path(args.path) if Path(args.path).is_dir() else Path(args.path).parent
            print(f"warning: {run_dir} is marked incomplete: its distilled.pt may predate the run's last state",
                  file=sys.stderr)
        res = export_set(r, args.format, args.out, args.force)
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    c, h, w = res["shape"]
    views = f" + {res['num_region_views']} region views" if res["num_region_views"] else ""
    print(f"exported {res['num_images']} images of {c}x{h}x{w} ({res['num_stored']} stored x {res['factor'] ** 2} "
          f"formations{views}, {res['num_classes']} classes) as {res['format']} to {res['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
