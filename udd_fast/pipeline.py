"""A distillation run in phases, whoever starts it (`python -m udd_fast.distill` builds a Request from
its flags):

    run = prepare(request, comm)    every check, the data and the config; nothing is written yet
    execute(run)                    claims the run directory (INCOMPLETE) and opens log.txt, then
        load_proxy(run)             UDD's proxy network, cached or trained, on every rank
        result = distill(run)       the outer iterations, checkpoints, a stop on SIGINT/SIGTERM
        res = save(run, result)     the Result: distilled.pt and grid.png written
        evaluate(run, result)       IDC's evaluation, with and without UDD's region views
        build_summary(...)          then curves.png, report.html and summary.json, the last artifact
                                    (udd_fast.result); the directory is then complete

execute turns a stop or a failed write into a message naming the last checkpoint and the resume
command. With several ranks (torchrun) every rank runs the phases; rank 0 alone writes files and
evaluates.
"""
import dataclasses
import datetime
import math
import os
import platform
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed, rng
from .artifacts import (INCOMPLETE, ArtifactError, WriteError, check_out_dir, claim_run_dir, mark_complete,
                        write_error_message)
from .checkpoint import CheckpointError, check_data, load_checkpoint, save_checkpoint
from .config import PRESETS, UDD, Config, UsageError, build_config, setting_problem, settings
from .data import (ArrayDataset, DataError, RealData, canonical_name, data_facts, load_dataset, resolve_data_dir,
                   user_data_path)
from .decode import factor_problem
from .distributed import Comm, RankFailure
from .engine import Distiller, static_path
from .evaluate import evaluate_set, test_count
from .proxy import load_or_train_proxy
from .regions import window_grid
from .result import Result, write_outcome, write_set
from .version import __version__
from .train import accuracy


class Interrupted(KeyboardInterrupt):
    """A stopped run; the message names the checkpoint and the resume command."""


def _quiet(msg):
    pass


@dataclass
class Request:
    """What a run is asked to do."""
    # a built-in's canonical name, user data's resolved absolute path, or data in memory (data.from_arrays)
    dataset: object
    out: Path  # the run directory
    # flat config settings (udd_fast.config): for a new run the ones given (None: the dataset and the
    # preset decide); for a resumed run all of them (its checkpoint's, with the changes allowed)
    settings: dict
    data_dir: Path = None  # the built-ins' directory (None: $UDD_FAST_DATA, else ~/.cache/udd_fast/data)
    download: bool = True  # fetch missing built-in files
    force: bool = False  # replace another run's files in `out`
    resume: dict = None  # the loaded checkpoint (checkpoint.load_checkpoint) to continue
    progress: bool = True  # progress bars


@dataclass
class Run:
    """A prepared run: what the phases read and what they hand on."""
    request: Request
    cfg: Config
    data: RealData
    facts: dict  # what identifies the training data (udd_fast.data.data_facts)
    data_dir: Path  # where the built-ins were read (None for user data): saved for evaluate and --resume
    comm: Comm
    replaced: list  # another run's files in `out` that --force replaces
    log: object = _quiet  # log(line): stderr and log.txt on rank 0, once execute has claimed the directory
    proxy: torch.nn.Module = None  # UDD's proxy network
    notes: dict = field(default_factory=dict)  # facts for the summary gathered by the phases

    @property
    def out(self) -> Path:
        return self.request.out

    @property
    def progress(self) -> bool:
        return self.request.progress and self.comm.is_main

    @property
    def launcher(self) -> str:
        """The command that starts this run again (a resume names it)."""
        if self.comm.distributed:
            return f"torchrun --nproc_per_node {self.comm.world} -m udd_fast.distill"
        return "python -m udd_fast.distill"


@dataclass
class Distilled:
    """The distilled set and how it was made."""
    images: torch.Tensor  # stored images in [0, 1]
    labels: torch.Tensor
    regions: tuple  # UDD's region views: (source index [M], box [M, 4]), or None
    iterations: int  # outer iterations of the run (0: real images, --method random)
    final_loss: float  # the last outer iteration's mean matching loss (None without iterations)
    seconds: float
    loop_seconds: float  # the outer iterations alone, without the short evaluations (None without a loop)
    # {"loss"|"mue"|"accuracy": [[outer, value], ...]}, empty without outer iterations
    history: dict = field(default_factory=lambda: {"loss": [], "mue": [], "accuracy": []})


# -- prepare: every check before anything is written -------------------------------------------------

def prepare(req: Request, comm: Comm = None) -> Run:
    """Check the output directory, load the data, make the config and check it against the data and the
    ranks. Raises UsageError, DataError, ArtifactError or CheckpointError; writes nothing."""
    comm = comm or Comm()
    replaced = comm.from_main(lambda: check_out_dir(req.out, req.force, req.resume is not None), (ArtifactError,))
    if isinstance(req.dataset, ArrayDataset):
        data_dir, ds = None, req.dataset
    else:
        data_dir = None if Path(req.dataset).is_absolute() else resolve_data_dir(req.data_dir)
        # each node's local rank 0 first: it downloads what the node's other ranks then read
        ds = comm.everywhere(lambda: load_dataset(req.dataset, data_dir, download=req.download), (DataError,),
                             local_first=True)
    data = RealData(ds, comm.device if comm.distributed else req.settings["device"])
    facts = data_facts(data)
    if comm.distributed:
        comm.same_everywhere(facts, "training data", DataError)
    if req.resume is not None:
        check_data(req.resume, facts)
    cfg = _config(req.settings, ds.info, resumed=req.resume is not None, distributed=comm.distributed)
    if cfg.udd.proxy_cache:  # a relative cache would move with the working directory of a resume
        cfg.udd.proxy_cache = str(Path(cfg.udd.proxy_cache).expanduser().absolute())
    check_geometry(cfg, data)
    check_world(cfg, comm, ds.info.num_classes)
    return Run(req, cfg, data, facts, data_dir, comm, replaced)


def option_settings() -> list:
    """The settings a run may be given (the command line's options, the API's keyword arguments)."""
    return [f for f in settings() if f.metadata["flag"]]


def option_defaults() -> dict:
    """Each option setting's value when not given: its default where it has its own, else None (the
    dataset and the preset decide)."""
    return {f.name: f.default if f.metadata["flag_default"] else None for f in option_settings()}


def check_settings(values: dict, given, spell):
    """The settings of a new run on their own (against the data: check_geometry): each value allowed,
    UDD's only with --method udd, none that needs a distillation with --method random, a CUDA device
    present. spell(name, value=None) is how the caller names a setting, with a value if given (--flag
    value, or keyword=value)."""
    for f in option_settings():
        v = values.get(f.name)
        problem = None if v is None else setting_problem(f, v)
        if problem:
            raise UsageError(f"{spell(f.name)} {problem} (got {v})")
    if values["ipc"] > 50:
        print(f"note: IPC {values['ipc']} is beyond the 1-50 range this tool is tuned for", file=sys.stderr)
    udd = [f.name for f in option_settings() if f.metadata["flag"] == UDD and values.get(f.name) is not None]
    if udd and values["method"] != "udd":
        raise UsageError(f"{spell(udd[0])} is a UDD setting: it needs {spell('method', 'udd')}")
    unused = [f.name for f in option_settings() if f.metadata["distill_only"] and f.name in given]
    if values["method"] == "random" and unused:
        raise UsageError(f"{spell(unused[0])} does not apply to {spell('method', 'random')}: it stores IPC real images per "
                         f"class, without distillation (factor 1, no iterations)")
    if str(values["device"]).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"{spell('device', 'cuda')} was asked for, but this torch build sees no CUDA device; use "
                         f"{spell('device', 'cpu')}")


def _config(settings: dict, info, resumed: bool, distributed: bool = False) -> Config:
    """A resumed run's config as given; a new one's from the dataset, the preset and the settings given
    (a distributed run's form is the batched one unless given)."""
    if resumed:
        return Config.from_flat(settings)
    values = dict(settings)
    if distributed and not values.get("form"):
        values["form"] = "batched"
    ipc, preset, factor = values.pop("ipc"), values.pop("preset"), values.pop("factor")
    if values["method"] == "random":  # real images, stored whole
        factor = 1
    return build_config(info.name, ipc, preset, info.size, info.size_base, factor=factor, **values)


def check_world(cfg: Config, comm: Comm, num_classes: int):
    """What a distributed run cannot do, said before any work starts."""
    if not comm.distributed:
        return
    if cfg.run.method == "random":
        raise UsageError(f"--method random has nothing to distribute: run it in one process (not {comm.world})")
    if cfg.match.form != "batched":
        raise UsageError(f"--form {cfg.match.form} is one process's loop; a distributed run ({comm.world} ranks) "
                         f"uses the batched form")
    if cfg.eval.eval_every:  # rank 0 alone evaluates: the others would wait past --dist-timeout
        raise UsageError(f"--eval-every is one process's: a distributed run ({comm.world} ranks) evaluates at the end")
    if cfg.match.cuda_graphs == "on" or cfg.match.compile == "on":  # auto means off under torchrun
        flag = "--cuda-graphs on" if cfg.match.cuda_graphs == "on" else "--compile on"
        raise UsageError(f"{flag} runs in one process: a distributed run ({comm.world} ranks) all-reduces the "
                         f"network update's gradients per batch, on the plain path")
    if comm.world > num_classes:
        raise UsageError(f"{comm.world} ranks for {num_classes} classes: every rank needs at least one class; "
                         f"start at most {num_classes} processes")


def _check_class_sizes(data, need_per_class, what, fix):
    counts = data.class_counts.cpu()
    small = int(counts.argmin())
    if int(counts[small]) < need_per_class:
        raise UsageError(f"{what} needs {need_per_class} training images per class, but class {small} "
                         f"({data.info.class_names[small]}) has {int(counts[small])}: {fix}")


def check_geometry(cfg: Config, data):
    """The settings against the data: tile and window sizes, images per class. Before any work."""
    size, ipc, factor = data.info.size, cfg.run.ipc, cfg.match.factor
    if cfg.run.method == "random":
        _check_class_sizes(data, ipc, f"--method random with IPC {ipc}", "lower --ipc")
        return
    problem = factor_problem(size, factor)
    if problem:
        raise UsageError(f"--factor {factor} {problem}")
    if cfg.run.method == "udd" and cfg.udd.policy != "none":
        tile = math.ceil(size / factor)
        try:
            window_grid(tile, cfg.udd.region_size)
        except ValueError as e:
            raise UsageError(f"--region-size {cfg.udd.region_size}: {e} ({size}-pixel images, factor {factor}); "
                             f"use at least {0.5 / tile:.3g}") from None
    _check_class_sizes(data, ipc * factor ** 2, f"the mix initialization (IPC {ipc} x factor^2 {factor ** 2})",
                       "lower --ipc or --factor")
    batch = cfg.match.batch_real
    _check_class_sizes(data, batch, f"a real batch of {batch} per class", "lower --batch-real")


# -- execute: the phases that write ---------------------------------------------------------------------

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


def execute(run: Run) -> Result:
    """Claim the run directory and run the phases; returns the Result (None on ranks other than 0).
    A stop (KeyboardInterrupt) or a failed write is logged and raised again as Interrupted or WriteError
    with a message naming the last checkpoint and the resume command."""
    comm, out = run.comm, run.out
    note = f"Once it has written checkpoint.pt, continue it with: {run.launcher} --resume {shlex.quote(str(out))}\n"
    stale = comm.from_main(lambda: claim_run_dir(out, run.replaced, note), (ArtifactError,))
    log = RunLog(out / "log.txt") if comm.is_main else None  # rank 0 alone writes
    run.log = log or _quiet
    try:
        if run.replaced:
            run.log(f"--force: replaced the previous run's files in {out}: {', '.join(run.replaced)}")
        if stale:
            run.log(f"removed temporary files a stopped run left in {out}: {', '.join(stale)}")
        _log_start(run)
        if run.cfg.run.method == "udd":
            load_proxy(run)
        result = distill(run)
        if not comm.is_main:
            return None  # rank 0 saves and evaluates
        res = save(run, result)
        res.summary = build_summary(run, result, evaluate(run, result))
        write_outcome(out, res)  # summary.json last: the run is complete once it is there
        run.log(f"saved {out}/distilled.pt, grid.png, curves.png, report.html, summary.json, log.txt")
        mark_complete(out)
        return res
    except (WriteError, KeyboardInterrupt) as e:
        if isinstance(e, Interrupted) or not comm.is_main:
            raise
        msg = f"{e}; {resume_advice(out, run.launcher)}" if isinstance(e, WriteError) else \
            f"stopped before the run completed; {resume_advice(out, run.launcher)}"
        try:
            run.log(msg)
        except WriteError:
            pass  # the disk is full: the message still reaches stderr
        raise (WriteError if isinstance(e, WriteError) else Interrupted)(msg) from None
    finally:
        if log is not None:
            log.close()


def resume_advice(out: Path, launcher: str) -> str:
    """Where a stopped run stands and the command that continues it."""
    try:
        done = load_checkpoint(out)["state"]["outer_done"]
    except CheckpointError:
        return (f"no checkpoint was saved, so nothing can be resumed; {out} is marked incomplete ({INCOMPLETE}); "
                f"start again with --force")
    return (f"the last checkpoint ({done} outer iterations) is kept in {out / 'checkpoint.pt'} and {out} is marked "
            f"incomplete ({INCOMPLETE}); resume with: {launcher} --resume {shlex.quote(str(out))}")


def _log_start(run: Run):
    cfg, info, comm = run.cfg, run.data.info, run.comm
    run.log(f"udd_fast {__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"device {cfg.run.device}"
            + (f", {comm.world} ranks ({distributed.backend_name()})" if comm.distributed else ""))
    run.log(f"dataset {info.name}: {run.data.images.shape[0]} train / {run.data.test_images.shape[0]} test, "
            f"{info.num_classes} classes, {info.channels}x{info.size}x{info.size}")
    run.log(f"method {cfg.run.method}, IPC {cfg.run.ipc}, factor {cfg.match.factor}, preset {cfg.run.preset}: "
            f"{PRESETS[cfg.run.preset]}")
    run.log(f"config {cfg.to_dict()}")


# -- the UDD proxy ----------------------------------------------------------------------------------------

def load_proxy(run: Run):
    """UDD's proxy network in run.proxy: rank 0 loads or trains it, every rank gets the same network."""
    run.proxy, facts = run.comm.from_main(lambda: _cpu_proxy(*_main_proxy(run)))
    run.notes.update(facts)


def _cpu_proxy(proxy, facts):
    return proxy.cpu(), facts  # sent to the other ranks as CPU tensors; the Distiller moves it to its device


def _main_proxy(run: Run):
    """The UDD proxy network (cached) and its facts for the summary."""
    cfg, data, udd = run.cfg, run.data, run.cfg.udd
    t = time.time()
    proxy, how = load_or_train_proxy(data, udd.proxy_epochs, cfg.run.seed, cfg.eval.eval_aug, cfg.eval.eval_cutmix,
                                     udd.proxy_cache or None, run.progress, run.log)
    n_test = test_count(data, cfg.eval.eval_test_limit)
    acc = accuracy(proxy, data.test_images[:n_test], data.test_labels[:n_test], data.mean, data.std)
    run.log(f"proxy network ({how}, {udd.proxy_epochs} epochs): test accuracy {acc:.2f} % on {n_test} images")
    facts = {"proxy": {"epochs": udd.proxy_epochs, "source": how, "test_accuracy": acc,
                       "seconds": time.time() - t},
             "regions": {k: getattr(udd, k) for k in ("policy", "region_size", "region_every", "jitter_sigma",
                                                      "jitter_draws")},
             "cfc": {"weight": udd.cfc_weight, "tau": udd.cfc_tau}}
    return proxy, facts


# -- distill ----------------------------------------------------------------------------------------------

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


def random_selection(data, ipc, seed):
    """IPC random real images per class (keyed): the same stored pixels as a distilled set, factor 1."""
    K = data.info.num_classes
    keys = rng.subkeys(rng.key(seed, "random_selection"), torch.arange(K, device=data.images.device))
    perm = rng.permutation(keys, data.class_indices.shape[1], valid=data.class_counts)[:, :ipc]
    idx = torch.gather(data.class_indices, 1, perm).reshape(-1)
    return data.to_float(idx), data.labels[idx]


def distill(run: Run) -> Distilled:
    """The distilled set (None on ranks other than 0): IPC real images per class for --method random,
    else the outer iterations from where the run stands, with a checkpoint every
    cfg.run.checkpoint_every of them; SIGINT/SIGTERM stops at the next inner iteration and saves the
    last outer boundary (Interrupted), a failed rank stops every rank likewise (RankFailure)."""
    cfg, comm, log, ck = run.cfg, run.comm, run.log, run.request.resume
    t0 = time.time()
    if cfg.run.method == "random":
        images, labels = random_selection(run.data, cfg.run.ipc, cfg.run.seed)
        seconds = time.time() - t0
        log(f"distillation done in {seconds:.1f} s")
        return Distilled(images, labels, None, 0, None, seconds, None)
    d = Distiller(cfg, run.data, log=log, proxy=run.proxy, comm=comm)
    static, capture, compiled = static_path(cfg, d.device, comm.distributed)
    log(f"loop: {cfg.match.form} form, {cfg.match.precision}, "
        + ("static buffers" + (" captured as CUDA graphs" if capture else " (no capture off CUDA)") if static
           else "plain path") + (", compiled network update" if compiled else ""))
    iterations = cfg.match.iterations
    history = {"loss": [], "mue": [], "accuracy": []}
    if run.proxy is not None and comm.is_main:
        run.notes["mue_initial"] = d.mue(d.S)  # S is the initialization until a state is loaded
        history["mue"].append([0, run.notes["mue_initial"]])
    if ck is not None:
        try:
            d.load_state(ck["state"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{ck['path']}: its state does not fit this run ({e})") from None
        run.notes["resumed_from_outer"] = d.outer_done
        history = {k: [p for p in v if p[0] <= d.outer_done] for k, v in (ck.get("history") or history).items()}
        log(f"resumed from {ck['path']} after {d.outer_done} outer iterations"
            + ("" if ck["version"] == __version__ else f" (saved by udd_fast {ck['version']})"))
    bar = tqdm(total=iterations, initial=d.outer_done, desc="distill", unit="outer", disable=not run.progress,
               mininterval=1.0)
    snap = d.state()  # the last completed outer boundary: what a stop saves
    snap_start = snap["outer_done"]

    def checkpoint(state):
        if not comm.is_main:
            return run.out / "checkpoint.pt"
        return save_checkpoint(run.out, state, cfg.to_dict(), run.facts, dataset_arg(run.request.dataset),
                               run.data_dir, not run.request.download, history)

    eval_seconds = 0.0

    def on_outer(outer, loss, seconds):
        nonlocal snap, eval_seconds
        history["loss"].append([outer + 1, loss])
        if run.proxy is not None and comm.is_main:
            history["mue"].append([outer + 1, d.mue(d.S)])
        if cfg.eval.eval_every and (outer + 1) % cfg.eval.eval_every == 0:
            t = time.time()
            history["accuracy"].append([outer + 1, short_evaluation(run, d)])
            eval_seconds += time.time() - t
        snap = d.state()
        every = cfg.run.checkpoint_every
        if every and (d.outer_done % every == 0 or d.outer_done == iterations):
            checkpoint(snap)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4g}")
        if (outer + 1) % max(1, iterations // 10) == 0 or outer + 1 == iterations:
            log(f"outer {outer + 1}/{iterations}: matching loss {loss:.5g} ({seconds:.1f} s)")

    resume = f"resume with: {run.launcher} --resume {shlex.quote(str(run.out))}"
    t_loop = time.time()
    with _StopOnSignal() as stop:
        try:
            images = d.run(on_outer, should_stop=stop)
            if stop.requested:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            path = checkpoint(snap)
            msg = f"stopped after {snap['outer_done']}/{iterations} outer iterations; state saved in {path}; {resume}"
            log(msg)
            raise Interrupted(msg) from None
        except RankFailure as e:
            bar.close()
            path = checkpoint(snap)  # every rank holds the last merged boundary; rank 0 writes it
            msg = (f"{e}; the state after {snap['outer_done']}/{iterations} outer iterations is in {path}; "
                   f"{resume} (any number of processes)")
            log(msg)
            raise RankFailure(msg) from None
    bar.close()
    loop_seconds = time.time() - t_loop - eval_seconds
    if comm.distributed:
        run.notes["communication"] = _comm_summary(comm, cfg, d.outer_done - int(snap_start), loop_seconds)
        log(f"communication per inner iteration (payload bytes, rank {comm.rank}): "
            f"{run.notes['communication']['payload_bytes_per_inner_iteration']:.0f}")
    if not comm.is_main:
        return None  # rank 0 saves and evaluates
    regions = None
    if run.proxy is not None:
        regions = d.regions()
        run.notes.update(mue_final=d.mue(images), policy_share=d.policy_share(), policy_counts=dict(d.policy_counts))
        log(f"mUE {run.notes['mue_initial']:.4f} -> {run.notes['mue_final']:.4f}; policy share "
            f"{run.notes['policy_share']}")
    seconds = time.time() - t0
    log(f"distillation done in {seconds:.1f} s")
    if eval_seconds:
        run.notes["eval_every_seconds"] = eval_seconds
    return Distilled(images, d.labels(), regions, iterations, d.last_loss if iterations else None, seconds,
                     loop_seconds, history)


def short_evaluation(run: Run, d: Distiller) -> float:
    """--eval-every: the set as it stands, trained on once for a fifth of the evaluation epochs (the same
    network initialization and batches each time, so the points compare); the test accuracy in %."""
    ev = dataclasses.replace(run.cfg.eval, eval_runs=1, eval_epochs=max(1, run.cfg.eval.eval_epochs // 5))
    regions = d.regions() if run.cfg.eval.eval_region_views else None
    res = evaluate_set(d.result(), d.labels(), run.cfg.match.factor, run.data, ev, run.cfg.run.seed, False, regions)
    run.log(f"outer {d.outer_done}: short evaluation ({ev.eval_arch}, {ev.eval_epochs} epochs, 1 run) "
            f"{res['accuracy_mean']:.2f} % ({res['eval_seconds']:.1f} s)")
    return res["accuracy_mean"]


def dataset_arg(dataset) -> str:
    """What identifies the data to load (and a checkpoint records to find it again): user data's resolved
    absolute path (the same from any working directory), a built-in's canonical name, or for data in
    memory its name alone. Raises DataError for an unknown name or a missing path."""
    if isinstance(dataset, ArrayDataset):
        return dataset.info.name
    path = user_data_path(dataset)
    return str(path) if path is not None else canonical_name(dataset)


def _comm_summary(comm, cfg, outer_done, seconds):
    """Payload bytes this rank handed to collectives during the loop, by purpose and per iteration."""
    inner_loop = cfg.match.inner_loop
    inner = max(1, outer_done * inner_loop)
    total = sum(comm.bytes_by_purpose.values())
    return {"world_size": comm.world, "rank": comm.rank, "backend": distributed.backend_name(),
            "outer_iterations": outer_done, "inner_iterations": outer_done * inner_loop,
            "payload_bytes_by_purpose": dict(comm.bytes_by_purpose),
            "calls_by_purpose": dict(comm.calls_by_purpose),
            "payload_bytes_per_inner_iteration": total / inner,
            "loop_seconds": seconds, "seconds_per_inner_iteration": seconds / inner}


# -- save, evaluate, summarize ----------------------------------------------------------------------------

def save(run: Run, result: Distilled) -> Result:
    """The Result, its distilled.pt (the set, its config and the data's identity) and grid.png written."""
    regions = None if result.regions is None else tuple(t.cpu() for t in result.regions)
    res = Result(result.images.detach().float().cpu(), result.labels.cpu(), run.cfg.match.factor, regions,
                 run.data.info, run.cfg, {"history": result.history}, run.facts,
                 None if run.data_dir is None else str(run.data_dir))
    write_set(run.out, res)
    return res


def evaluate(run: Run, result: Distilled) -> dict:
    """The summary's evaluation fields ({} with --eval-runs 0). With UDD's region views both readings
    are reported: with them and without (views raise the decoded count)."""
    if not run.cfg.eval.eval_runs:
        return {}
    use_views = result.regions is not None and run.cfg.eval.eval_region_views
    res = _evaluate(run, result, result.regions if use_views else None)
    out = {k: res[k] for k in ("accuracy_mean", "accuracy_std", "accuracy_runs", "best_mean", "best_runs",
                               "eval_seconds", "num_train")}
    out["eval"] = {k: res[k] for k in ("arch", "epochs", "runs", "augmentation", "cutmix", "validations",
                                       "num_test", "region_views")}
    if result.regions is not None:
        other = _evaluate(run, result, None if use_views else result.regions)
        key = "without_region_views" if use_views else "with_region_views"
        out[key] = {k: other[k] for k in ("accuracy_mean", "accuracy_std", "accuracy_runs", "num_train")}
        out["eval_seconds"] += other["eval_seconds"]
    return out


def _evaluate(run: Run, result: Distilled, regions):
    ev, views = run.cfg.eval, ("with region views" if regions is not None else "formations only")
    run.log(f"evaluating ({views}): {ev.eval_arch}, {ev.eval_epochs} epochs x {ev.eval_runs} runs")
    res = evaluate_set(result.images, result.labels, run.cfg.match.factor, run.data, ev, run.cfg.run.seed,
                       run.progress, regions)
    run.log(f"accuracy ({ev.eval_arch}, {views}, last epoch): {res['accuracy_mean']:.2f} +- "
            f"{res['accuracy_std']:.2f} % over {ev.eval_runs} runs {['%.2f' % a for a in res['accuracy_runs']]}; "
            f"best of {res['validations']} tests {res['best_mean']:.2f}; {res['eval_seconds']:.1f} s")
    return res


def build_summary(run: Run, result: Distilled, evaluation: dict) -> dict:
    """summary.json: the run's settings, the set, timings, what the phases noted, and the evaluation."""
    cfg = run.cfg
    summary = {
        "dataset": run.data.info.name, "ipc": cfg.run.ipc, "method": cfg.run.method, "preset": cfg.run.preset,
        "device": cfg.run.device, "seed": cfg.run.seed, "factor": cfg.match.factor, "iterations": result.iterations,
        "inner_loop": cfg.match.inner_loop, "form": cfg.match.form, "world_size": run.comm.world,
        "final_matching_loss": result.final_loss, "distill_seconds": result.seconds,
        "loop_seconds": result.loop_seconds, "num_stored": int(result.images.shape[0]), "version": __version__,
        "torch": torch.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "accuracy_mean": None, "accuracy_std": None, "accuracy_runs": [], "eval_seconds": 0.0,
        "history": result.history,
    }
    summary.update(run.notes)
    summary.update(evaluation)
    return summary
