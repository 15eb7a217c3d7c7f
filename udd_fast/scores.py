"""DD-Ranking's label-robust score (LRS) and its parts, with hard labels, from accuracies measured with one
protocol: a set's, random real images' at the same IPC and the full training set's (docs/scores.md names the
source and where we follow its code or its documentation).

    HLR = Acc(full, hard) - Acc(set, hard)              hard-label recovery: the gap left to the full data
    IOR = Acc(set, hard)  - Acc(random, hard)           improvement over random real images
    alpha = w * IOR - (1 - w) * HLR                     w = 0.5, DD-Ranking's leaderboard weight
    LRS = (e^alpha - e^-1) / (e - e^-1)                 in [0, 1] for accuracies as fractions

The accuracies enter as fractions (so alpha lies in [-1, 1] and LRS in [0, 1], as DD-Ranking's documentation
says; its code passes percents, which leaves LRS near -0.157 for any set below the full data's accuracy).
Each score is computed per evaluation run, run r of the set with run r of each reference (udd_fast keys run r's
network initialization and batches alike for every training set), and reported as mean and std over runs, as
DD-Ranking reports its per-run scores. The recovered share Acc(set) / Acc(full) is given beside them.
"""
import math
import statistics

WEIGHT = 0.5  # DD-Ranking's w (lrs_lambda): "By default, we set w = 0.5 on the leaderboard"


def lrs(full: float, syn: float, rand: float, weight: float = WEIGHT) -> float:
    """The label-robust score of one run, accuracies in percent; returns it as a fraction in [0, 1]."""
    hlr, ior = (full - syn) / 100.0, (syn - rand) / 100.0
    alpha = weight * ior - (1.0 - weight) * hlr
    return (math.exp(alpha) - math.exp(-1.0)) / (math.exp(1.0) - math.exp(-1.0))


def _mean_std(values: list) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": values}


def scores(syn_runs: list, random_runs: list = None, full_runs: list = None, weight: float = WEIGHT) -> dict:
    """The scores a set's per-run accuracies (percent) allow: with random_runs, "ior" (percentage points); with
    full_runs, "hlr" (points) and "recovered" (percent of the full data's accuracy); with both, "lrs" (percent,
    100 x the score). Each {"mean", "std", "runs"} over the runs the lists share (the shortest list's count);
    "paired_runs" says how many."""
    lists = [x for x in (syn_runs, random_runs, full_runs) if x]
    n = min(len(x) for x in lists)
    if n == 0 or not syn_runs:
        raise ValueError("scores need at least one accuracy of the set")
    out = {"paired_runs": n, "weight": weight}
    syn = syn_runs[:n]
    if random_runs:
        out["ior"] = _mean_std([s - r for s, r in zip(syn, random_runs)])
    if full_runs:
        out["hlr"] = _mean_std([f - s for s, f in zip(syn, full_runs)])
        out["recovered"] = _mean_std([100.0 * s / f if f > 0 else math.nan for s, f in zip(syn, full_runs)])
    if random_runs and full_runs:
        out["lrs"] = _mean_std([100.0 * lrs(f, s, r, weight) for s, r, f in zip(syn, random_runs, full_runs)])
    return out
