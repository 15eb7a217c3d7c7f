"""`python -m udd_fast.distill`: distill a dataset, evaluate the result and save the artifacts.

Writes into --out: distilled.pt, summary.json, grid.png (one row per class) and log.txt, and, while
distilling, checkpoint.pt (resume a stopped run with --resume DIR). The directory is marked INCOMPLETE
until summary.json, the last artifact, is written (udd_fast.artifacts); a directory holding another
run is refused unless --force.
Every input is checked before any long work starts, and nothing is written on bad input.

Started by torchrun with several processes, the run is distributed (udd_fast.distributed): classes
are split across ranks, network updates are data-parallel, and rank 0 alone writes files and
evaluates. Exit status: 0 done, 2 bad input, 3 a rank failed (state saved), 130 interrupted.
"""
import argparse
import datetime
import math
import os
import platform
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__, distributed, rng
from .artifacts import (INCOMPLETE, ArtifactError, WriteError, check_out_dir, claim_run_dir, mark_complete,
                        save_distilled, write_error_message, write_grid, write_json)
from .checkpoint import CheckpointError, check_data, load_checkpoint, save_checkpoint
from .config import MAIN, PRESET, PRESETS, UDD, Config, build_config, setting_problem, settings
from .data import (DATASETS, DataError, RealData, canonical_name, data_facts, load_dataset, resolve_data_dir,
                   user_data_path)
from .decode import factor_problem
from .distributed import Comm, RankFailure
from .engine import Distiller
from .evaluate import evaluate_set, test_count
from .proxy import load_or_train_proxy
from .regions import window_grid
from .train import accuracy


class UsageError(ValueError):
    """An impossible combination of flags."""


class Interrupted(KeyboardInterrupt):
    """A stopped run; the message names the checkpoint and the resume command."""


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
                   help="(required unless --resume) mnist, fashionmnist, svhn, cifar10, cifar100, a .npz file (images, labels) or a folder "
                        "of class subfolders")
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


def _check_flags(args, given=frozenset()):
    """The flags on their own (the data's geometry comes in _check_geometry)."""
    if args.dataset is None and not args.resume:
        raise UsageError("--dataset is required (unless --resume DIR)")
    if args.force and args.resume:
        raise UsageError("--force with --resume: a resumed run continues in its own directory; drop --force")
    for f in settings():
        v = getattr(args, f.name, None)
        problem = None if v is None else setting_problem(f, _option_value(f, v))
        if problem:
            raise UsageError(f"{_flag(f.name)} {problem} (got {v})")
    if args.ipc > 50:
        print(f"note: IPC {args.ipc} is beyond the 1-50 range this tool is tuned for", file=sys.stderr)
    udd_flags = [f.name for f in _options(UDD) if getattr(args, f.name) is not None]
    if udd_flags and args.method != "udd":
        raise UsageError(f"{_flag(udd_flags[0])} is a UDD setting: it needs --method udd")
    unused = [f.name for f in settings() if f.metadata["distill_only"] and f.name in given]
    if args.method == "random" and unused:
        raise UsageError(f"{_flag(unused[0])} does not apply to --method random: it stores IPC real images per "
                         f"class, without distillation (factor 1, no iterations)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but this torch build sees no CUDA device; use --device cpu")
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        raise UsageError(f"--dist-timeout must be a finite number of seconds > 0 (got {args.dist_timeout})")


def _check_world(args, cfg, comm, num_classes):
    """What a distributed run cannot do, said before any work starts."""
    if not comm.distributed:
        return
    if args.method == "random":
        raise UsageError(f"--method random has nothing to distribute: run it in one process (not {comm.world})")
    if cfg.match.form != "batched":
        raise UsageError(f"--form {cfg.match.form} is one process's loop; a distributed run ({comm.world} ranks) uses "
                         f"the batched form")
    if comm.world > num_classes:
        raise UsageError(f"{comm.world} ranks for {num_classes} classes: every rank needs at least one class; "
                         f"start at most {num_classes} processes")


def _check_class_sizes(data, need_per_class, what, fix):
    counts = data.class_counts.cpu()
    small = int(counts.argmin())
    if int(counts[small]) < need_per_class:
        raise UsageError(f"{what} needs {need_per_class} training images per class, but class {small} "
                         f"({data.info.class_names[small]}) has {int(counts[small])}: {fix}")


def _check_geometry(cfg, data):
    """The settings against the data: tile and window sizes, images per class. Before any work."""
    size = data.info.size
    if cfg.run.method == "random":
        _check_class_sizes(data, cfg.run.ipc, f"--method random with IPC {cfg.run.ipc}", "lower --ipc")
        return
    problem = factor_problem(size, cfg.match.factor)
    if problem:
        raise UsageError(f"--factor {cfg.match.factor} {problem}")
    if cfg.run.method == "udd" and cfg.udd.policy != "none":
        tile = math.ceil(size / cfg.match.factor)
        try:
            window_grid(tile, cfg.udd.region_size)
        except ValueError as e:
            raise UsageError(f"--region-size {cfg.udd.region_size}: {e} ({size}-pixel images, factor {cfg.match.factor}); "
                             f"use at least {0.5 / tile:.3g}") from None
    _check_class_sizes(data, cfg.run.ipc * cfg.match.factor ** 2,
                       f"the mix initialization (IPC {cfg.run.ipc} x factor^2 {cfg.match.factor ** 2})", "lower --ipc or --factor")
    _check_class_sizes(data, cfg.match.batch_real, f"a real batch of {cfg.match.batch_real} per class", "lower --batch-real")


class RunLog:
    """Lines to stderr and to log.txt in the output directory (appended as the run goes). A failed write
    raises WriteError once; later lines go to stderr only."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.fh = open(path, "a", buffering=1)
        except OSError as e:
            raise WriteError(write_error_message(path, e)) from None

    def __call__(self, msg):
        line = f"[{datetime.datetime.now().isoformat(timespec='seconds')}] {msg}"
        tqdm.write(line, file=sys.stderr)
        if self.fh is None:
            return
        try:
            self.fh.write(line + "\n")
        except OSError as e:
            self.close()
            raise WriteError(write_error_message(self.path, e)) from None

    def close(self):
        if self.fh is not None:
            try:
                self.fh.close()
            except OSError:
                pass  # the line that could not be written was already reported
            self.fh = None


def random_selection(data, ipc, seed):
    """IPC random real images per class (keyed): the same stored pixels as a distilled set, factor 1."""
    K = data.info.num_classes
    keys = rng.subkeys(rng.key(seed, "random_selection"), torch.arange(K, device=data.images.device))
    perm = rng.permutation(keys, data.class_indices.shape[1], valid=data.class_counts)[:, :ipc]
    idx = torch.gather(data.class_indices, 1, perm).reshape(-1)
    return data.to_float(idx), data.labels[idx]


def _explicit_flags(argv):
    """The dests of the flags given on the command line (parse again with every default None)."""
    p = _parser()
    for a in p._actions:
        a.default = None
    return {k for k, v in vars(p.parse_args(argv)).items() if v is not None}


def _dataset_arg(name):
    """What identifies the dataset on the command line: user data's resolved absolute path (the same
    from any working directory), else the canonical built-in name."""
    path = user_data_path(name)
    return str(path) if path is not None else canonical_name(name)


def _saved_dataset_arg(saved: str) -> str:
    """A checkpoint's dataset_arg; older checkpoints kept a relative path as given (read from here)."""
    if Path(saved).is_absolute() or saved in DATASETS:
        return saved
    return str(Path(saved).expanduser().resolve())


def _default_out(dataset: str, args) -> Path:
    """runs/<name>-ipc<N>-<method>-<preset>-s<seed>, <name> the dataset's own: a built-in's name, an .npz
    file's stem, a folder's name."""
    p = Path(dataset)
    name = (p.stem if p.suffix.lower() == ".npz" else p.name) if p.is_absolute() else dataset
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "data"
    return Path("runs") / f"{name}-ipc{args.ipc}-{args.method}-{args.preset}-s{args.seed}"


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
    saved = _saved_dataset_arg(ck["dataset_arg"])
    if "dataset" in given and _dataset_arg(args.dataset) != saved:
        raise UsageError(f"--dataset {args.dataset} differs from {saved} in {where}")
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
    args.dataset, args.out = saved, args.resume
    return cfg


def _resume_advice(out: Path, launcher: str) -> str:
    """Where a stopped run stands and the command that continues it."""
    try:
        done = load_checkpoint(out)["state"]["outer_done"]
    except CheckpointError:
        return (f"no checkpoint was saved, so nothing can be resumed; {out} is marked incomplete ({INCOMPLETE}); "
                f"start again with --force")
    return (f"the last checkpoint ({done} outer iterations) is kept in {out / 'checkpoint.pt'} and {out} is marked "
            f"incomplete ({INCOMPLETE}); resume with: {launcher} --resume {shlex.quote(str(out))}")


def run(args, given=frozenset(), comm: Comm = None):
    comm = comm or Comm()
    given = set(given)
    ck = cfg = None
    if args.resume:  # rank 0 reads it (the other nodes may not see its disk)
        ck = comm.from_main(lambda: load_checkpoint(args.resume), (CheckpointError,))
        cfg = _resume_config(args, given, ck)
    _check_flags(args, given)
    dataset = _dataset_arg(args.dataset)
    out = Path(args.out or _default_out(dataset, args)).absolute()
    replaced = comm.from_main(lambda: check_out_dir(out, args.force, bool(args.resume)), (ArtifactError,))
    data_dir = None if Path(dataset).is_absolute() else resolve_data_dir(args.data_dir)
    # each node's local rank 0 first: it downloads what the node's other ranks then read
    ds = comm.everywhere(lambda: load_dataset(dataset, data_dir, download=not args.no_download), (DataError,),
                         local_first=True)
    info = ds.info
    data = RealData(ds, comm.device if comm.distributed else args.device)
    facts = data_facts(data)
    if comm.distributed:
        comm.same_everywhere(facts, "training data", DataError)
    if ck is not None:
        check_data(ck, facts)
    if cfg is None:
        values = {f.name: _option_value(f, getattr(args, f.name)) for f in settings() if f.metadata["flag"]}
        ipc, preset, factor = values.pop("ipc"), values.pop("preset"), values.pop("factor")
        cfg = build_config(info.name, ipc, preset, info.size, info.size_base,
                           factor=1 if args.method == "random" else factor, **values)
    if cfg.udd.proxy_cache:  # a relative cache would move with the working directory of a resume
        cfg.udd.proxy_cache = str(Path(cfg.udd.proxy_cache).expanduser().absolute())
    _check_geometry(cfg, data)
    _check_world(args, cfg, comm, info.num_classes)

    # every check passed: from here on the output directory is this run's
    launcher = (f"torchrun --nproc_per_node {comm.world} -m udd_fast.distill" if comm.distributed
                else "python -m udd_fast.distill")
    note = f"Once it has written checkpoint.pt, continue it with: {launcher} --resume {shlex.quote(str(out))}\n"
    stale = comm.from_main(lambda: claim_run_dir(out, replaced, note), (ArtifactError,))
    log = RunLog(out / "log.txt") if comm.is_main else None  # rank 0 alone writes
    try:
        if replaced:
            log(f"--force: replaced the previous run's files in {out}: {', '.join(replaced)}")
        if stale:
            log(f"removed temporary files a stopped run left in {out}: {', '.join(stale)}")
        summary = _distill_and_evaluate(cfg, data, out, log or (lambda msg: None), progress=not args.no_progress,
                                        ck=ck, dataset_arg=dataset, facts=facts, comm=comm, data_dir=data_dir,
                                        no_download=args.no_download, launcher=launcher)
        if comm.is_main:
            mark_complete(out)
        return summary
    except (WriteError, KeyboardInterrupt) as e:
        if isinstance(e, Interrupted) or not comm.is_main:
            raise
        msg = f"{e}; {_resume_advice(out, launcher)}" if isinstance(e, WriteError) else \
            f"stopped before the run completed; {_resume_advice(out, launcher)}"
        try:
            log(msg)
        except WriteError:
            pass  # the disk is full: the message still reaches stderr
        raise (WriteError if isinstance(e, WriteError) else Interrupted)(msg) from None
    finally:
        if log is not None:
            log.close()


class _StopOnSignal:
    """While distilling: the first SIGINT/SIGTERM asks the loop to stop at its next inner iteration (so
    the last outer boundary is saved); a second one interrupts at once."""

    def __init__(self):
        self.requested, self.old = False, {}

    def __call__(self):
        return self.requested

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # said at once (an inner iteration can take minutes); os.write is safe inside a signal handler
        os.write(2, f"\n{signal.Signals(signum).name} received: stopping at the end of the current inner iteration "
                    f"and saving the last outer boundary (send it again to stop at once; that boundary is still "
                    f"saved)\n".encode())

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers only there
            self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def _distill_and_evaluate(cfg, data, out, log, progress, ck=None, dataset_arg=None, facts=None, comm=None,
                          data_dir=None, no_download=False, launcher="python -m udd_fast.distill"):
    comm = comm or Comm()
    main = comm.is_main
    progress = progress and main
    info = data.info
    log(f"udd_fast {__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"device {cfg.run.device}" + (f", {comm.world} ranks ({distributed.backend_name()})" if comm.distributed else ""))
    log(f"dataset {info.name}: {data.images.shape[0]} train / {data.test_images.shape[0]} test, "
        f"{info.num_classes} classes, {info.channels}x{info.size}x{info.size}")
    log(f"method {cfg.run.method}, IPC {cfg.run.ipc}, factor {cfg.match.factor}, preset {cfg.run.preset}: {PRESETS[cfg.run.preset]}")
    log(f"config {cfg.to_dict()}")
    udd_summary = {}
    proxy = None
    if cfg.run.method == "udd":  # rank 0 loads or trains it, every rank gets the same network
        proxy, udd_summary = comm.from_main(lambda: _cpu_proxy(*_proxy(cfg, data, log, progress)))
    t0 = time.time()
    final_loss = None
    regions = None
    loop_seconds = None
    if cfg.run.method == "random":
        images, labels = random_selection(data, cfg.run.ipc, cfg.run.seed)
        iterations = 0
    else:
        d = Distiller(cfg, data, log=log, proxy=proxy, comm=comm)
        iterations = cfg.match.iterations
        if proxy is not None and main:
            udd_summary["mue_initial"] = d.mue(d.S)  # S is the initialization until a state is loaded
        if ck is not None:
            try:
                d.load_state(ck["state"])
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{ck['path']}: its state does not fit this run ({e})") from None
            udd_summary["resumed_from_outer"] = d.outer_done
            log(f"resumed from {ck['path']} after {d.outer_done} outer iterations"
                + ("" if ck["version"] == __version__ else f" (saved by udd_fast {ck['version']})"))
        bar = tqdm(total=cfg.match.iterations, initial=d.outer_done, desc="distill", unit="outer", disable=not progress,
                   mininterval=1.0)
        snap = d.state()  # the last completed outer boundary: what a stop saves
        snap_start = snap["outer_done"]

        def checkpoint(state):
            if not main:
                return Path(out) / "checkpoint.pt"
            return save_checkpoint(out, state, cfg.to_dict(), facts, dataset_arg, data_dir, no_download)

        def on_outer(outer, loss, seconds):
            nonlocal snap
            snap = d.state()
            every = cfg.run.checkpoint_every
            if every and (d.outer_done % every == 0 or d.outer_done == cfg.match.iterations):
                checkpoint(snap)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")
            if (outer + 1) % max(1, cfg.match.iterations // 10) == 0 or outer + 1 == cfg.match.iterations:
                log(f"outer {outer + 1}/{cfg.match.iterations}: matching loss {loss:.5g} ({seconds:.1f} s)")

        t_loop = time.time()
        with _StopOnSignal() as stop:
            try:
                images = d.run(on_outer, should_stop=stop)
                if stop.requested:
                    raise KeyboardInterrupt
            except KeyboardInterrupt:
                bar.close()
                path = checkpoint(snap)
                msg = (f"stopped after {snap['outer_done']}/{cfg.match.iterations} outer iterations; state saved in {path}; "
                       f"resume with: {launcher} --resume {shlex.quote(str(out))}")
                log(msg)
                raise Interrupted(msg) from None
            except RankFailure as e:
                bar.close()
                path = checkpoint(snap)  # every rank holds the last merged boundary; rank 0 writes it
                msg = (f"{e}; the state after {snap['outer_done']}/{cfg.match.iterations} outer iterations is in {path}; "
                       f"resume with: {launcher} --resume {shlex.quote(str(out))} (any number of processes)")
                log(msg)
                raise RankFailure(msg) from None
        bar.close()
        loop_seconds = time.time() - t_loop
        if comm.distributed:
            udd_summary["communication"] = _comm_summary(comm, cfg, d.outer_done - int(snap_start), loop_seconds)
            log(f"communication per inner iteration (payload bytes, rank {comm.rank}): "
                f"{udd_summary['communication']['payload_bytes_per_inner_iteration']:.0f}")
        if not main:
            return None  # rank 0 saves and evaluates
        labels = d.labels()
        final_loss = d.last_loss if cfg.match.iterations else None
        if proxy is not None:
            regions = d.regions()
            udd_summary.update(mue_final=d.mue(images), policy_share=d.policy_share(),
                               policy_counts=dict(d.policy_counts))
            log(f"mUE {udd_summary['mue_initial']:.4f} -> {udd_summary['mue_final']:.4f}; policy share "
                f"{udd_summary['policy_share']}")
    distill_seconds = time.time() - t0
    log(f"distillation done in {distill_seconds:.1f} s")
    save_distilled(out / "distilled.pt", images, labels, cfg.match.factor, info, cfg.to_dict(), regions, facts, data_dir)
    write_grid(out / "grid.png", images, labels, info.num_classes)

    summary = {
        "dataset": info.name, "ipc": cfg.run.ipc, "method": cfg.run.method, "preset": cfg.run.preset, "device": cfg.run.device,
        "seed": cfg.run.seed, "factor": cfg.match.factor, "iterations": iterations, "inner_loop": cfg.match.inner_loop,
        "form": cfg.match.form, "world_size": comm.world, "final_matching_loss": final_loss, "distill_seconds": distill_seconds,
        "loop_seconds": loop_seconds,
        "num_stored": int(images.shape[0]), "version": __version__, "torch": torch.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "accuracy_mean": None, "accuracy_std": None, "accuracy_runs": [], "eval_seconds": 0.0,
    }
    summary.update(udd_summary)
    if cfg.eval.eval_runs > 0:
        use_views = regions is not None and cfg.eval.eval_region_views
        res = _evaluate(cfg, data, images, labels, regions if use_views else None, log, progress)
        summary.update({k: res[k] for k in ("accuracy_mean", "accuracy_std", "accuracy_runs", "best_mean",
                                            "best_runs", "eval_seconds", "num_train")})
        summary["eval"] = {k: res[k] for k in ("arch", "epochs", "runs", "augmentation", "cutmix", "validations",
                                               "num_test", "region_views")}
        if regions is not None:  # region views raise the decoded count: always report both readings
            other = _evaluate(cfg, data, images, labels, None if use_views else regions, log, progress)
            key = "without_region_views" if use_views else "with_region_views"
            summary[key] = {k: other[k] for k in ("accuracy_mean", "accuracy_std", "accuracy_runs", "num_train")}
            summary["eval_seconds"] += other["eval_seconds"]
    write_json(out / "summary.json", summary)  # the last artifact: the run is complete once it is there
    log(f"saved {out}/distilled.pt, summary.json, grid.png, log.txt")
    return summary


def _comm_summary(comm, cfg, outer_done, seconds):
    """Payload bytes this rank handed to collectives during the loop, by purpose and per iteration."""
    inner = max(1, outer_done * cfg.match.inner_loop)
    total = sum(comm.bytes_by_purpose.values())
    return {"world_size": comm.world, "rank": comm.rank, "backend": distributed.backend_name(),
            "outer_iterations": outer_done, "inner_iterations": outer_done * cfg.match.inner_loop,
            "payload_bytes_by_purpose": dict(comm.bytes_by_purpose),
            "calls_by_purpose": dict(comm.calls_by_purpose),
            "payload_bytes_per_inner_iteration": total / inner,
            "loop_seconds": seconds, "seconds_per_inner_iteration": seconds / inner}


def _cpu_proxy(proxy, facts):
    return proxy.cpu(), facts  # sent to the other ranks as CPU tensors; the Distiller moves it to its device


def _proxy(cfg, data, log, progress):
    """The UDD proxy network (cached) and its facts for the summary."""
    t = time.time()
    proxy, how = load_or_train_proxy(data, cfg.udd.proxy_epochs, cfg.run.seed, cfg.eval.eval_aug, cfg.eval.eval_cutmix,
                                     cfg.udd.proxy_cache or None, progress, log)
    n_test = test_count(data, cfg.eval.eval_test_limit)
    acc = accuracy(proxy, data.test_images[:n_test], data.test_labels[:n_test], data.mean, data.std)
    log(f"proxy network ({how}, {cfg.udd.proxy_epochs} epochs): test accuracy {acc:.2f} % on {n_test} images")
    facts = {"proxy": {"epochs": cfg.udd.proxy_epochs, "source": how, "test_accuracy": acc,
                       "seconds": time.time() - t},
             "regions": {k: getattr(cfg.udd, k) for k in ("policy", "region_size", "region_every", "jitter_sigma",
                                                      "jitter_draws")},
             "cfc": {"weight": cfg.udd.cfc_weight, "tau": cfg.udd.cfc_tau}}
    return proxy, facts


def _evaluate(cfg, data, images, labels, regions, log, progress):
    views = "with region views" if regions is not None else "formations only"
    log(f"evaluating ({views}): {cfg.eval.eval_arch}, {cfg.eval.eval_epochs} epochs x {cfg.eval.eval_runs} runs")
    res = evaluate_set(images, labels, cfg.match.factor, data, cfg.eval, cfg.run.seed, progress, regions)
    log(f"accuracy ({cfg.eval.eval_arch}, {views}, last epoch): {res['accuracy_mean']:.2f} +- {res['accuracy_std']:.2f} % "
        f"over {cfg.eval.eval_runs} runs {['%.2f' % a for a in res['accuracy_runs']]}; "
        f"best of {res['validations']} tests {res['best_mean']:.2f}; {res['eval_seconds']:.1f} s")
    return res


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    old = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops as SIGINT does
        old = signal.signal(signal.SIGTERM, _interrupt)
    comm, where = None, ""
    try:
        comm = distributed.init(args.device, args.dist_timeout)
        where = f"rank {comm.rank}: " if comm.distributed else ""
        run(args, _explicit_flags(argv), comm)
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
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        if comm is not None:
            comm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
