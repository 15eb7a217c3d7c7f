"""A distillation run in phases, whoever starts it (`python -m udd_fast.distill` builds a Request from
its flags, `udd_fast.distill_dataset` from its arguments). This file is the table of contents:

    run = prepare(request, comm)      the run directory's lock, every check (checks.py), the data and the
                                      config; nothing else is written
    execute(run)                      claims the run directory (INCOMPLETE) and opens log.txt (runlog.py), then
        load_proxy(run)               UDD's proxy network, cached or trained, on every rank (driver.py)
        outcome = drive(run)          the outer iterations, checkpoints, a stop on SIGINT/SIGTERM (driver.py)
        result = to_result(...)       the Result; distilled.pt and grid.png written (finish.py, result.py)
        accuracy_fields(run, result)  IDC's evaluation, with and without UDD's region views (finish.py)
        build_summary(...)            then curves.png, report.html and summary.json, the last artifact;
                                      the directory is then complete (result.write_run)
      or, for --method full, the networks trained on every real image (finish.reference_fields, cached),
      then report.html and summary.json (result.write_reference_run): no set

execute turns a stop or a failed write into a message naming the last checkpoint and the resume
command. With several ranks (torchrun) every rank runs the phases; rank 0 alone writes files and
evaluates. The records handed between the phases are in records.py.
"""
import shlex
from pathlib import Path

from ..artifacts import ArtifactError, RunDirLock, WriteError, check_out_dir, claim_run_dir
from ..checkpoint import check_data
from ..config import USES_PROXY
from ..data import ArrayDataset, DataError, RealData, data_facts, load_dataset, resolve_data_dir
from ..distributed import Comm
from ..result import Result, write_reference_run, write_run
from .checks import (check_geometry, check_out_beside_data, check_test_split, check_world,
                     note_network_update_cost, run_config)
from .driver import drive, load_proxy
from .finish import accuracy_fields, build_summary, reference_fields, to_result
from .records import Interrupted, LoopOutcome, Request, Run
from .runlog import RunLog, log_start, resume_advice

__all__ = ["Interrupted", "LoopOutcome", "Request", "Run", "execute", "prepare"]


def prepare(req: Request, comm: Comm = None) -> Run:
    """Take the output directory's lock (rank 0, which alone writes there; held until execute ends), check
    the directory, load the data, make the config and check it against the data and the ranks. Raises
    UsageError, DataError, ArtifactError or CheckpointError, having released the lock and written nothing."""
    comm = comm or Comm()
    check_out_beside_data(req.out, req.dataset)
    lock = RunDirLock(req.out) if comm.is_main else None
    comm.from_main(lambda: lock.acquire() and None, (ArtifactError,))
    try:
        return _prepare(req, comm, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _prepare(req: Request, comm: Comm, lock) -> Run:
    replaced = comm.from_main(lambda: check_out_dir(req.out, req.force, req.resume is not None), (ArtifactError,))
    if isinstance(req.dataset, ArrayDataset):
        data_dir, ds = None, req.dataset
    else:
        data_dir = resolve_data_dir(req.data_dir) if req.dataset.kind in ("builtin", "imagenet") else None
        # each node's local rank 0 first: it downloads (or decodes into the image cache) what the node's other
        # ranks then read
        ds = comm.everywhere(lambda: load_dataset(req.dataset, data_dir, download=req.download,
                                                  progress=req.progress and comm.is_main), (DataError,),
                             local_first=True)
    data = RealData(ds, comm.device if comm.distributed else req.settings["device"],
                    req.settings.get("real_on_device") or "auto")
    facts = data_facts(data)
    if comm.distributed:
        comm.same_everywhere(facts, "training data", DataError)
    if req.resume is not None:
        check_data(req.resume, facts)
    cfg = run_config(req.settings, ds.info, resumed=req.resume is not None, distributed=comm.distributed)
    if cfg.udd.proxy_cache:  # a relative cache would move with the working directory of a resume
        cfg.udd.proxy_cache = str(Path(cfg.udd.proxy_cache).expanduser().absolute())
    check_geometry(cfg, data)
    check_test_split(cfg, data)
    check_world(cfg, comm, ds.info.num_classes)
    if comm.is_main:
        note_network_update_cost(cfg, data)
    return Run(req, cfg, data, facts, data_dir, comm, replaced, lock)


def execute(run: Run) -> Result:
    """Claim the run directory and run the phases; returns the Result (None on ranks other than 0).
    A stop (KeyboardInterrupt) or a failed write is logged and raised again as Interrupted or WriteError
    with a message naming the last checkpoint and the resume command. The run directory's lock (prepare's)
    is released at the end, however it ends."""
    try:
        return _execute(run)
    finally:
        if run.lock is not None:
            run.lock.release()


def _full_reference(run: Run):
    """--method full: the evaluation networks trained on the whole training set (cached), written as a run
    directory without a set (report.html, summary.json); returns None, there being no Result."""
    fields = reference_fields(run)
    summary = build_summary(run, LoopOutcome(None, None, None, 0, None, 0.0, None), fields)  # nothing distilled
    summary["ipc"] = None  # every training image
    write_reference_run(run.out, summary, run.cfg.to_dict(), run.data.info.class_names)
    run.log(f"saved {run.out}/report.html, summary.json, log.txt")
    return None


def _execute(run: Run) -> Result:
    comm, out = run.comm, run.out
    note = f"Once it has written checkpoint.pt, continue it with: {run.launcher} --resume {shlex.quote(str(out))}\n"
    stale = comm.from_main(lambda: claim_run_dir(out, run.replaced, note), (ArtifactError,))
    log = RunLog(out / "log.txt") if comm.is_main else None  # rank 0 alone writes
    if log is not None:
        run.log = log
    try:
        if run.lock is not None and run.lock.note:
            run.log(f"note: {run.lock.note}")
        if run.replaced:
            run.log(f"--force: replaced the previous run's files in {out}: {', '.join(run.replaced)}")
        if stale:
            run.log(f"removed temporary files a stopped run left in {out}: {', '.join(stale)}")
        log_start(run)
        if run.cfg.run.method == "full":
            return _full_reference(run) if comm.is_main else None
        if run.cfg.run.method in USES_PROXY:  # UDD's regions, herding's and k-center's features
            load_proxy(run)
        outcome = drive(run)
        if not comm.is_main:
            return None  # rank 0 saves and evaluates
        result = to_result(run, outcome)
        write_run(out, result, ("set",))  # the set first: it survives a failed evaluation
        result.summary = build_summary(run, outcome, accuracy_fields(run, result))
        write_run(out, result, ("outcome",))  # summary.json last: the run is complete once it is there
        run.log(f"saved {out}/distilled.pt, grid.png, curves.png, report.html, summary.json, log.txt")
        return result
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
