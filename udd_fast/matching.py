"""Gradient matching's distance (IDC's `dist` for 'mse' and 'l1'), shared by the distillation loop
(udd_fast.engine) and the IDC-shaped drop-in (udd_fast.compat)."""


def match_distance(g_real, g_syn, metric: str, dims):
    """IDC's `dist` summed over the given dims ('mse': squared, 'l1': absolute differences)."""
    d = g_real - g_syn
    if metric == "mse":
        return d.pow(2).sum(dims)
    if metric == "l1":
        return d.abs().sum(dims)
    raise ValueError(f"unknown metric {metric!r} (mse or l1)")
