"""How long work reports itself, and how a command stops. A log is a callable taking one line of text;
`quiet` is the log of a caller that wants none. `bar` is the progress bar every long loop shows
(stderr, at most one refresh a second, off when not `enabled`). `sigterm_as_interrupt` makes SIGTERM
stop a command as SIGINT does."""
import contextlib
import signal
import threading

from tqdm import tqdm


def quiet(line: str):
    """The log that writes nothing."""


def bar(total, desc: str, enabled: bool, **kw) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=1.0, **kw)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside: SIGTERM stops the command as SIGINT does (a KeyboardInterrupt its main turns into a one-line
    message and exit status 130), so both unwind through every cleanup. Signal handlers live in the main
    thread only; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
