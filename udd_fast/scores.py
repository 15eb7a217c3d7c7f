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
    """The label-robust score of one run with hard labels, accuracies in percent; returns it as a fraction in
    [0, 1]."""
    return _lrs_of(full - syn, syn - rand, weight)


def _lrs_of(hlr: float, ior: float, weight: float) -> float:
    """The score from HLR and IOR in percentage points."""
    alpha = weight * ior / 100.0 - (1.0 - weight) * hlr / 100.0
    return (math.exp(alpha) - math.exp(-1.0)) / (math.exp(1.0) - math.exp(-1.0))


def _mean_std(values: list) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": values}


def scores(syn_runs: list, random_runs: list = None, full_runs: list = None, weight: float = WEIGHT,
           soft: tuple = None) -> dict:
    """The scores a set's per-run accuracies (percent, hard labels) allow: with random_runs, "ior" (percentage
    points); with full_runs, "hlr" (points) and "recovered" (percent of the full data's accuracy); with both,
    "lrs" (percent, 100 x the score). soft = (the set's, the random selection's accuracies with a teacher's soft
    labels): IOR from those instead (DD-Ranking's soft-label LRS; HLR stays hard), random_runs then unused.
    Each {"mean", "std", "runs"} over the runs the lists share (the shortest list's count); "paired_runs" says
    how many."""
    ior_syn, ior_rand = soft if soft is not None else (syn_runs, random_runs)
    lists = [x for x in (syn_runs, ior_syn, ior_rand, full_runs) if x]
    n = min(len(x) for x in lists)
    if n == 0 or not syn_runs:
        raise ValueError("scores need at least one accuracy of the set")
    out = {"paired_runs": n, "weight": weight, "labels": "hard" if soft is None else "soft"}
    syn = syn_runs[:n]
    if ior_rand:
        out["ior"] = _mean_std([s - r for s, r in zip(ior_syn, ior_rand)][:n])
    if full_runs:
        out["hlr"] = _mean_std([f - s for s, f in zip(syn, full_runs)])
        out["recovered"] = _mean_std([100.0 * s / f if f > 0 else math.nan for s, f in zip(syn, full_runs)])
    if ior_rand and full_runs:  # lrs(full, syn, rand) takes IOR as syn - rand: give it IOR's own pair
        out["lrs"] = _mean_std([100.0 * _lrs_of(f - s, i_s - i_r, weight)
                                for s, f, i_s, i_r in zip(syn, full_runs, ior_syn, ior_rand)])
    return out
