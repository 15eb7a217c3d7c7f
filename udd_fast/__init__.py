"""udd_fast: fast, checkable dataset distillation (IDC multi-formation matching, UDD on top).

The Python API (udd_fast.api): `distill_dataset(...)` returns a `Result`; `evaluate_distilled(...)`
evaluates a Result or a saved run. Imported on first use, so `import udd_fast` stays light.
"""

from .version import __version__

_API = ("distill_dataset", "evaluate_distilled", "Result")
__all__ = [*_API, "__version__"]


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'udd_fast' has no attribute {name!r}")


def __dir__():
    """The API beside what is loaded already: dir(udd_fast) and tab completion list the lazy names."""
    return sorted(set(globals()) | set(_API))
