"""`python -m udd_fast.evaluate DIR_OR_FILE`, and `evaluate_distilled` (the same from Python): a saved
distilled set evaluated with IDC's protocol (udd_fast.protocol), on the data it was distilled on.
"""
import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import torch

from . import foreign
from .artifacts import ArtifactError, RunDirLock, WriteError, write_json
from .config import UsageError, arch_eval_epochs, eval_archs, full_data_eval
from .data import NO_TEST_IMAGES, ArrayDataset, DataError, DataSource, RealData, load_dataset
from .logs import sigterm_as_interrupt
from .models import ARCHS
from .protocol import accuracy_of
from .reference import teacher_network
from .result import Result, incomplete_message
from .train import SoftLabels


def format_of(path) -> str:
    """The set's format (foreign.detect); a directory holding none is read as a udd_fast run directory, perhaps
    still being written, whose lock and Result.load then say what is wrong."""
    try:
        return foreign.detect(path)
    except ArtifactError:
        if Path(path).is_dir():
            return "udd_fast"
        raise


def evaluate_distilled(source, *, data=None, data_dir=None, download=True, arch=None, runs=None, epochs=None,
                       seed=None, with_region_views=None, device="cpu", progress=True, allow_data_mismatch=False,
                       allow_incomplete=False, fmt=None, factor=None, experiment=None, zca=None, soft_labels=False,
                       teacher_epochs=None, temperature=1.2) -> dict:
    """Evaluate a distilled set with IDC's protocol; returns the results (accuracy per run, mean, std,
    ...; "warnings" lists what was allowed, "format" and "notes" what was read).

    source: a Result, a udd_fast run directory holding distilled.pt, the file itself, or another tool's set
      (udd_fast.foreign: IDC's data.pt, DC/DSA/DM's res_*.pt, MTT's images_best.pt/labels_best.pt, an .npz,
      an image folder), its format detected or given as `fmt`, with `factor` (IDC), `experiment` (DC) and
      `zca` (MTT) where the format needs them.
    data: the data to test on (a dataset name, an .npz or folder path, or an ArrayDataset from
      udd_fast.data.from_arrays); default: the set's own, read from `data_dir` (default: the run's);
      required for another tool's set, which does not name it.
    arch, runs, epochs, seed, with_region_views: default the run's own settings (IDC's for the data,
      paper preset, for another tool's set).
    soft_labels: train on a teacher's soft labels instead of the set's (train.SoftLabels, as DD-Ranking does,
      at `temperature`); the teacher is `arch` trained on the full training set as --method full trains it
      (config.full_data_eval: its first run, `teacher_epochs` or the preset's), cached (reference.teacher_network).
    """
    if teacher_epochs is not None and teacher_epochs < 1:
        raise UsageError(f"--teacher-epochs must be >= 1 (got {teacher_epochs})")
    if not soft_labels and (teacher_epochs is not None or temperature != 1.2):
        raise UsageError("--teacher-epochs and --temperature are for --soft-labels")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise UsageError(f"--temperature must be a finite number > 0 (got {temperature})")
    for name, v in (("runs", runs), ("epochs", epochs)):
        if v is not None and v < 1:
            raise UsageError(f"{name} must be >= 1 (got {v})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} was asked for, but this torch build sees no CUDA device")
    warnings, notes = [], []
    fmt = "udd_fast" if isinstance(source, Result) else (fmt or format_of(source))
    if fmt not in foreign.FORMATS:
        raise UsageError(f"--format {fmt}: one of {', '.join(foreign.FORMATS)}")
    if fmt == "udd_fast":
        for flag, value in (("--factor", factor), ("--experiment", experiment), ("--zca", zca)):
            if value is not None:
                raise UsageError(f"{flag} is for other tools' sets; {source} is a udd_fast set, which records its own")
        result = source if isinstance(source, Result) else Result.load(source, allow_incomplete=allow_incomplete)
        if result.incomplete:  # allowed: said in the result
            warnings.append(incomplete_message(result.run_dir))
    elif data is None:
        raise UsageError(f"{source}: a {fmt} set does not name the data it was distilled on: pass it (--dataset NAME)")
    else:
        result = None
    where = f"the Result of {result.info.name}" if isinstance(source, Result) else str(source)
    if isinstance(data, ArrayDataset):
        ds = data
    else:
        wanted = DataSource.parse(data if data is not None else result.info.name)
        if wanted.kind == "arrays":
            raise UsageError(f"{where} was distilled from images in memory: pass them as data "
                             f"(udd_fast.data.from_arrays(images, labels, test_images, test_labels))")
        ds = load_dataset(wanted, data_dir if data_dir is not None or result is None else result.data_dir,
                          download=download)
    if len(ds.test_labels) == 0:
        raise DataError(NO_TEST_IMAGES.format(name=ds.info.name) + ": there is nothing to evaluate on; pass data "
                        "with a test split")
    if result is None:
        result, notes = foreign.read_set(source, ds.info, fmt, factor, experiment, zca)
    cfg = result.config
    runs = cfg.eval.eval_runs if runs is None else runs
    if runs < 1:
        raise UsageError(f"the run's config asks for {runs} evaluation runs: pass runs=N (--eval-runs N on the "
                         f"command line), N >= 1")
    views = result.uses_region_views(with_region_views)
    real = RealData(ds, device)
    if fmt == "udd_fast":
        check_same_data(result, real, where, allow_data_mismatch, warnings)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    arch = arch or eval_archs(cfg.eval.eval_arch)[0]
    if arch not in ARCHS:
        raise UsageError(f"--arch {arch}: one of {', '.join(ARCHS)}")
    if epochs is None:  # the run's, or IDC's rule for this network
        epochs = arch_eval_epochs(arch, cfg.eval.eval_epochs, cfg.run.ipc, result.factor)
    ev = dataclasses.replace(cfg.eval, eval_arch=arch, eval_runs=runs, eval_epochs=epochs)
    seed = cfg.run.seed if seed is None else seed
    soft, teacher = None, None
    if soft_labels:
        tev = full_data_eval(real.info, cfg.run.preset, arch, teacher_epochs)
        model, teacher = teacher_network(real, tev, seed, progress=progress)
        soft, teacher["temperature"] = SoftLabels(model, temperature), temperature
    res = accuracy_of(result, real, ev, seed, progress, with_region_views=views, soft=soft)
    # what compare groups sets by: the data, the IPC, and the method (another tool's: its format)
    res.update(warnings=warnings, format=fmt, notes=notes, dataset=real.info.name, ipc=cfg.run.ipc,
               method=cfg.run.method if fmt == "udd_fast" else fmt, teacher=teacher)
    return res


def _arch_list(text):
    """--arch a,b,c: the networks to evaluate with, one after the other, each with IDC's protocol for it."""
    archs = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in archs if a not in ARCHS]
    if not archs or bad:
        raise argparse.ArgumentTypeError(f"{', '.join(bad) or repr(text)}: choose from {', '.join(ARCHS)}")
    if len(set(archs)) != len(archs):
        raise argparse.ArgumentTypeError(f"{text}: an architecture named twice")
    return archs


def _parser():
    p = argparse.ArgumentParser(prog="python -m udd_fast.evaluate",
                                description="Evaluate a saved distilled set with IDC's protocol.")
    p.add_argument("path", help="a udd_fast run directory or its distilled.pt, or another tool's set: IDC's data.pt, "
                                "DC/DSA/DM's res_*.pt, MTT's run directory (images_best.pt, labels_best.pt), an .npz "
                                "(images, labels), an image folder (<class>/<image>)")
    p.add_argument("--format", default=None, choices=foreign.FORMATS, help="default: detected from the path")
    p.add_argument("--dataset", default=None,
                   help="the data to test on: a built-in name, an .npz or a folder (default: a udd_fast run's own; "
                        "required for other tools' sets)")
    p.add_argument("--factor", type=int, default=None,
                   help="IDC's data.pt: its --factor (formations per side of each stored image; not in the file)")
    p.add_argument("--experiment", type=int, default=None,
                   help="DC/DSA/DM's res_*.pt: which experiment's set (default the last)")
    p.add_argument("--zca", default=None, choices=("on", "off"),
                   help="MTT's set: whether it was distilled with ZCA whitening (not in its files; required)")
    p.add_argument("--out", default=None,
                   help="another tool's set: also write eval_<arch>.json into this directory (a udd_fast run "
                        "writes into its own directory)")
    p.add_argument("--arch", "--eval-arch", default=None, type=_arch_list, metavar="ARCH[,ARCH...]",
                   help="the networks to evaluate with, comma-separated, each with IDC's protocol for it (DenseNet: "
                        "400 epochs at IPC >= 50 and factor > 1, as IDC's test.py); default: the run's own evaluation "
                        "network (convnet; IDC's resnet_ap10 on ImageNet)")
    p.add_argument("--soft-labels", action="store_true",
                   help="train on a teacher's soft labels instead of the set's, as DD-Ranking evaluates (the teacher "
                        "labels every augmented batch; KL loss at --temperature): the teacher is the evaluation "
                        "network trained on the full training set, cached; written as eval_<arch>_soft.json")
    p.add_argument("--teacher-epochs", type=int, default=None,
                   help="--soft-labels: the teacher's epochs on the full data (default --method full's for the run's "
                        "preset: 300 paper, 2 quick, 1 smoke)")
    p.add_argument("--temperature", type=float, default=1.2,
                   help="--soft-labels: the KL loss's temperature (default 1.2, DD-Ranking's)")
    p.add_argument("--eval-runs", type=int, default=None, help="default: the run's own setting")
    p.add_argument("--eval-epochs", type=int, default=None, help="default: the run's own setting")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--data-dir", default=None,
                   help="default: the run's own, else $UDD_FAST_DATA, else ~/.cache/udd_fast/data")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    p.add_argument("--seed", type=int, default=None, help="default: the run's own seed")
    p.add_argument("--eval-region-views", default=None, choices=("on", "off"),
                   help="add the saved region views to the formations (default: the run's own setting)")
    p.add_argument("--allow-data-mismatch", action="store_true",
                   help="evaluate although the data differs from the data the set was distilled on (other "
                        "classes, samples or content); the result then carries a warning")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="evaluate the distilled.pt of a run directory marked INCOMPLETE (a stopped run)")
    p.add_argument("--no-progress", action="store_true")
    return p


def check_same_data(result: Result, data, path, allow: bool, warnings: list):
    """Refuse data other than the set was distilled on (classes, counts, content), unless allowed."""
    from .artifacts import ArtifactError
    from .data import data_facts, data_mismatch

    x = result.images
    if data.info.channels != x.shape[1] or data.info.size != x.shape[-1]:  # cannot be overridden
        raise ArtifactError(f"{path}: images {tuple(x.shape[1:])} do not match "
                            f"{data.info.name} ({data.info.channels}x{data.info.size}x{data.info.size})")
    facts = data_facts(data)
    diff = data_mismatch({"num_classes": result.info.num_classes, "class_names": list(result.class_names),
                          **(result.facts or {})}, facts)
    if diff:
        msg = f"{path} was distilled on other data than {data.info.name} now holds: " + "; ".join(diff)
        if not allow:
            raise ArtifactError(f"{msg}; its labels would not mean the same classes (pass --allow-data-mismatch "
                                f"to evaluate anyway)")
        warnings.append(msg)
    elif result.facts is None:
        warnings.append(f"{path} predates data fingerprints: only the class names and count were compared")


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        fmt = args.format or format_of(args.path)
        if fmt == "udd_fast":
            if args.out is not None:
                raise UsageError("--out is for other tools' sets: a udd_fast run's evaluation goes into its directory")
            out = Path(args.path)
            out_dir = out if out.is_dir() else out.parent
        else:
            out_dir = None if args.out is None else Path(args.out)
            if out_dir is not None:
                try:  # made before any training: a result never waits on a directory it cannot have
                    out_dir.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise UsageError(f"--out {out_dir}: cannot be used as a directory ({e.strerror or e})") from None
    except (ArtifactError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # it writes eval_<arch>.json there: no other process may be writing that directory meanwhile
    lock = RunDirLock(out_dir) if out_dir is not None and out_dir.is_dir() else None
    try:
        with sigterm_as_interrupt():
            if lock is not None:
                lock.acquire()
            return _main(args, fmt, out_dir)
    except (DataError, ArtifactError, UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the evaluation stopped; nothing was written", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()


def _main(args, fmt, out_dir):
    """Each --arch in turn (the run's own network when none is given); each one's result printed and written
    as it ends, so that an interrupted call keeps the ones done."""
    try:
        for name in ("eval_runs", "eval_epochs"):
            v = getattr(args, name)
            if v is not None and v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (got {v})")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but this torch build sees no CUDA device")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = []
    for arch in args.arch or [None]:
        try:
            res = evaluate_distilled(args.path, data=args.dataset, data_dir=args.data_dir,
                                     download=not args.no_download, arch=arch, runs=args.eval_runs,
                                     epochs=args.eval_epochs, seed=args.seed,
                                     with_region_views=None if args.eval_region_views is None else
                                     args.eval_region_views == "on",
                                     device=args.device, progress=not args.no_progress,
                                     allow_data_mismatch=args.allow_data_mismatch,
                                     allow_incomplete=args.allow_incomplete,
                                     fmt=fmt, factor=args.factor, experiment=args.experiment, zca=args.zca,
                                     soft_labels=args.soft_labels, teacher_epochs=args.teacher_epochs,
                                     temperature=args.temperature)
        except (DataError, ArtifactError, UsageError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        res["path"] = str(args.path)
        results.append(res)
        print(f"{res['arch']}{' (soft labels)' if args.soft_labels else ''}: {res['accuracy_mean']:.2f} +- "
              f"{res['accuracy_std']:.2f} % over {res['runs']} runs of {res['epochs']} epochs (best of "
              f"{res['validations']} tests {res['best_mean']:.2f})", file=sys.stderr)
        if out_dir is not None:
            try:
                write_json(out_dir / f"eval_{res['arch']}{'_soft' if args.soft_labels else ''}.json", res)
            except WriteError as e:
                print(json.dumps(res, indent=2))
                print(f"error: {e}; the result is printed above", file=sys.stderr)
                return 2
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
