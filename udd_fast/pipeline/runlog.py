"""What a run says while it goes: log.txt (RunLog), its opening lines, what a signal does
(StopOnSignal), and where a stopped run stands (resume_advice)."""
import datetime
import os
import platform
import shlex
import signal
import sys
import threading
from pathlib import Path

import torch
from tqdm import tqdm

from .. import distributed
from ..artifacts import INCOMPLETE, WriteError, write_error_message
from ..checkpoint import CheckpointError, load_checkpoint
from ..config import PRESETS
from ..version import __version__


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


def log_start(run):
    """The run's opening lines: versions, machine, data, method and the whole config."""
    cfg, info, comm = run.cfg, run.data.info, run.comm
    run.log(f"udd_fast {__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"device {cfg.run.device}"
            + (f", {comm.world} ranks ({distributed.backend_name()})" if comm.distributed else ""))
    run.log(f"dataset {info.name}: {run.data.images.shape[0]} train / {run.data.test_images.shape[0]} test, "
            f"{info.num_classes} classes, {info.channels}x{info.size}x{info.size}")
    if cfg.run.method == "full":
        run.log(f"method full (the evaluation trained on every training image), preset {cfg.run.preset}: "
                f"{cfg.eval.eval_epochs} epochs x {cfg.eval.eval_runs} runs")
    else:
        run.log(f"method {cfg.run.method}, IPC {cfg.run.ipc}, factor {cfg.match.factor}, preset {cfg.run.preset}: "
                f"{PRESETS[cfg.run.preset]}")
    run.log(f"config {cfg.to_dict()}")


def resume_advice(out: Path, launcher: str) -> str:
    """Where a stopped run stands and the command that continues it."""
    try:
        done = load_checkpoint(out)["state"]["outer_done"]
    except CheckpointError:
        return (f"no checkpoint was saved, so nothing can be resumed; {out} is marked incomplete ({INCOMPLETE}); "
                f"start again with --force")
    return (f"the last checkpoint ({done} outer iterations) is kept in {out / 'checkpoint.pt'} and {out} is marked "
            f"incomplete ({INCOMPLETE}); resume with: {launcher} --resume {shlex.quote(str(out))}")


class StopOnSignal:
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
