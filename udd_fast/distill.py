"""`python -m udd_fast.distill`: distill a dataset, evaluate the result and save the artifacts.

Writes into --out: distilled.pt, grid.png, curves.png, report.html, summary.json (udd_fast.result) and
log.txt, and, while distilling, checkpoint.pt (resume a stopped run with --resume DIR); the same runs
from Python: udd_fast.api. The directory is marked INCOMPLETE
until summary.json, the last artifact, is written (udd_fast.artifacts); a directory holding another
run is refused unless --force.
Every input is checked before any long work starts, and nothing is written on bad input.

Started by torchrun with several processes, the run is distributed (udd_fast.distributed): classes
are split across ranks, network updates are data-parallel, and rank 0 alone writes files and
evaluates. Exit status: 0 done, 2 bad input, 3 a rank failed (state saved), 130 interrupted.

This module is the command line: its options come from the config's settings (udd_fast.config), a
resumed run's from its checkpoint; the run itself is udd_fast.pipeline's phases (`from_flags` hands
them a Request).
"""
import argparse
import math
import re
import sys
from pathlib import Path

from . import distributed
from .artifacts import ArtifactError
from .checkpoint import CheckpointError, load_checkpoint
from .config import (MAIN, PRESET, PRESETS, UDD, Config, UsageError, check_settings, option_settings,
                     settings)
from .data import DataError, DataSource
from .distributed import Comm, RankFailure
from .logs import sigterm_as_interrupt
from .pipeline import Interrupted, Request, execute, prepare


def _flag(name):
    return "--" + name.replace("_", "-")


def _options(section):
    """The config settings whose options stand in a --help section (config.MAIN, PRESET or UDD)."""
    return [f for f in settings() if f.metadata["flag"] == section]


def _add_options(target, section):
    """The options of a section's settings, as their metadata says (config.setting)."""
    for f in _options(section):
        m = f.metadata
        kw = dict(default=f.default if m["flag_default"] else None, help=m["help"], metavar=m["metavar"])
        if type(f.default) is bool:
            kw["choices"] = ("on", "off")
        elif m["flag_choices"] or m["choices"]:
            kw["choices"] = m["flag_choices"] or m["choices"]
        elif type(f.default) in (int, float):
            kw["type"] = type(f.default)
        target.add_argument(_flag(f.name), **kw)


def _option_value(f, value):
    """A setting's value from its option's (a bool option says on or off)."""
    return value == "on" if type(f.default) is bool and value is not None else value


def _parser():
    presets = "; ".join(f"{k}: {v}" for k, v in PRESETS.items())
    p = argparse.ArgumentParser(prog="python -m udd_fast.distill",
                                description="Distill a labelled image dataset into IPC synthetic images per class, "
                                            "evaluate them and save the artifacts.",
                                epilog=f"Presets -- {presets}")
    p.add_argument("--dataset", default=None,
                   help="(required unless --resume) mnist, fashionmnist, svhn, cifar10, cifar100, tinyimagenet "
                        "(<data-dir>/tiny-imagenet-200: wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images, "
                        "val/val_annotations.txt), imagenet10 or imagenet100 (IDC's class selections from "
                        "<data-dir>/imagenet/{train,val}/<wnid>/*.JPEG), imagenet with --classes FILE, a .npz file "
                        "(images, labels) or a folder of class subfolders")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help="the side the JPEG sets are resized and centre-cropped to, as IDC preprocesses (default 64 for "
                        "tinyimagenet, 224 for ImageNet); decoded once into $UDD_FAST_CACHE/images (else "
                        "~/.cache/udd_fast/images)")
    p.add_argument("--classes", default=None, metavar="FILE",
                   help="with --dataset imagenet: the ImageNet classes to distill, one wnid per line, in label order")
    _add_options(p, MAIN)
    p.add_argument("--out", default=None, help="output directory (default runs/<dataset>-ipc<N>-<method>-<preset>-s<seed>, "
                                               "<dataset> being a built-in's name, an .npz file's stem or a folder's name)")
    p.add_argument("--force", action="store_true",
                   help="write into an output directory that holds another run, replacing its files")
    p.add_argument("--data-dir", default=None, help="default: $UDD_FAST_DATA, else ~/.cache/udd_fast/data")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run saved in DIR/checkpoint.pt (its config is kept; --iterations may be "
                        "raised to extend it); writes into DIR")
    _add_options(p.add_argument_group(PRESET), PRESET)
    _add_options(p.add_argument_group(UDD), UDD)
    p.add_argument("--dist-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="under torchrun: how long a collective of the distillation loop waits for the other ranks "
                        "before the run stops with its state saved (default 60)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _spell(name, value=None):
    return _flag(name) + ("" if value is None else f" {value}")


def _check_flags(args, given=frozenset()):
    """The flags on their own (the data's geometry comes in pipeline.checks.check_geometry)."""
    if args.dataset is None and not args.resume:
        raise UsageError("--dataset is required (unless --resume DIR)")
    if args.force and args.resume:
        raise UsageError("--force with --resume: a resumed run continues in its own directory; drop --force")
    check_settings(_values(args), given, _spell)
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        raise UsageError(f"--dist-timeout must be a finite number of seconds > 0 (got {args.dist_timeout})")


def _values(args) -> dict:
    """The option settings' values as the flags give them (None: not given)."""
    return {f.name: _option_value(f, getattr(args, f.name)) for f in option_settings()}


def _explicit_flags(argv):
    """The dests of the flags given on the command line (parse again with every default None)."""
    p = _parser()
    for a in p._actions:
        a.default = None
    return {k for k, v in vars(p.parse_args(argv)).items() if v is not None}


def _default_out(source: DataSource, args) -> Path:
    """runs/<name>-ipc<N>-<method>-<preset>-s<seed> (--method full: no -ipc<N>), <name> the dataset's own: a built-in's name, an .npz
    file's stem, a folder's name."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", source.stem).strip("._") or "data"
    ipc = "" if args.method == "full" else f"-ipc{args.ipc}"  # the full-data reference has no IPC
    return Path("runs") / f"{name}{ipc}-{args.method}-{args.preset}-s{args.seed}"


def _resume_config(args, given, ck):
    """The checkpoint's config with the flags that may change applied; refuse flags that would change
    what is computed. Fills args from the config and the saved data location so the usual flag checks
    apply and the printed resume command needs nothing else."""
    saved_cfg = ck["config"].to_dict()
    where = ck["path"]
    for f in settings():
        name = f.name
        if f.metadata["fixed_on_resume"] and name in given and getattr(args, name) != saved_cfg[name]:
            raise UsageError(f"{_flag(name)} {getattr(args, name)} differs from {saved_cfg[name]} in "
                             f"{where}: a resumed run keeps its config (only --iterations, evaluation flags and "
                             f"--checkpoint-every may change)")
    saved = DataSource.parse(ck["dataset_arg"])  # older checkpoints: a path as given, read from here
    if given & {"dataset", "size", "classes"}:
        asked = DataSource.parse(args.dataset if "dataset" in given else str(saved)).with_options(args.size,
                                                                                                   args.classes)
        if asked != saved:
            raise UsageError(f"--dataset {asked} differs from {saved} in {where}")
    if "out" in given and Path(args.out).resolve() != Path(args.resume).resolve():
        raise UsageError(f"--out {args.out}: a resumed run writes into its own directory {args.resume}")
    done = ck["state"]["outer_done"]
    if args.iterations is not None and args.iterations < done:
        raise UsageError(f"--iterations {args.iterations} is below the {done} outer iterations already done "
                         f"in {where}")
    changes = {f.name: _option_value(f, getattr(args, f.name)) for f in settings()
               if f.metadata["flag"] and not f.metadata["fixed_on_resume"] and getattr(args, f.name) is not None}
    cfg = Config.from_flat({**saved_cfg, **changes})
    for f in settings():  # options with a default of their own would otherwise show that default
        if f.metadata["flag_default"]:
            setattr(args, f.name, saved_cfg[f.name])
    if "data_dir" not in given:
        args.data_dir = ck.get("data_dir")
    args.no_download = args.no_download or ck.get("no_download", False)
    args.dataset, args.out, args.size, args.classes = str(saved), args.resume, None, None
    return cfg


def from_flags(args, given=frozenset(), comm: Comm = None):
    """The run the flags ask for (--resume: the saved one, continued); returns its Result (None on ranks
    other than 0)."""
    comm = comm or Comm()
    given = set(given)
    ck = cfg = None
    if args.resume:  # rank 0 reads it (the other nodes may not see its disk)
        ck = comm.from_main(lambda: load_checkpoint(args.resume), (CheckpointError,))
        cfg = _resume_config(args, given, ck)
    _check_flags(args, given)
    source = DataSource.parse(args.dataset).with_options(args.size, args.classes)
    if cfg is None:
        values = _values(args)
    else:
        values = cfg.to_dict()
    req = Request(source, Path(args.out or _default_out(source, args)).absolute(), values, args.data_dir,
                  download=not args.no_download, force=args.force, resume=ck, progress=not args.no_progress)
    return execute(prepare(req, comm))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    with sigterm_as_interrupt():
        return _main(args, argv)


def _main(args, argv):
    comm, where = None, ""
    try:
        comm = distributed.init(args.device, args.dist_timeout)
        where = f"rank {comm.rank}: " if comm.distributed else ""
        from_flags(args, _explicit_flags(argv), comm)
        comm.close(barrier=True)
    except (UsageError, DataError, ArtifactError, FloatingPointError) as e:  # WriteError is an ArtifactError
        print(f"error: {where}{e}", file=sys.stderr)
        return 2
    except RankFailure as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(f"interrupted: {where}{e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: no artifact was written for the unfinished stage", file=sys.stderr)
        return 130
    finally:
        if comm is not None:
            comm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
