"""How long work reports itself. A log is a callable taking one line of text; `quiet` is the log of a
caller that wants none. `bar` is the progress bar every long loop shows (stderr, at most one refresh a
second, off when not `enabled`)."""
from tqdm import tqdm


def quiet(line: str):
    """The log that writes nothing."""


def bar(total, desc: str, enabled: bool, **kw) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=1.0, **kw)
