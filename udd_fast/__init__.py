"""udd_fast: fast, checkable dataset distillation (IDC multi-formation matching, UDD on top)."""

__version__ = "0.1.0"
