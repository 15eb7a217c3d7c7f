"""The end of a run: the Result made from the loop's outcome, its evaluation (with and without UDD's
region views) and summary.json's fields."""
import dataclasses
import datetime

import torch

from ..config import arch_eval_epochs, eval_archs
from ..protocol import accuracy_of
from ..reference import full_data_accuracy
from ..result import Result
from ..version import __version__
from .records import LoopOutcome, Run


def to_result(run: Run, outcome: LoopOutcome) -> Result:
    """The Result of a run (on the CPU): the set, its config and the data's identity."""
    views = None if outcome.region_views is None else type(outcome.region_views)(
        *(t.cpu() for t in outcome.region_views))
    return Result(outcome.images.detach().float().cpu(), outcome.labels.cpu(), run.cfg.match.factor, views,
                  run.data.info, run.cfg, {"history": outcome.history}, run.facts,
                  None if run.data_dir is None else str(run.data_dir))


def accuracy_fields(run: Run, result: Result) -> dict:
    """The summary's evaluation fields ({} with --eval-runs 0), from the first of --eval-arch's networks. With
    UDD's region views both readings are reported: with them and without (views raise the decoded count).
    `architectures` gives every network's mean +- std (the first's again), each with IDC's protocol for it."""
    if not run.cfg.eval.eval_runs:
        return {}
    archs = eval_archs(run.cfg.eval.eval_arch)
    use_views = result.region_views is not None and run.cfg.eval.eval_region_views
    res = _accuracy(run, result, use_views, archs[0])
    out = {k: res[k] for k in ("accuracy_mean", "accuracy_std", "accuracy_runs", "best_mean", "best_runs",
                               "eval_seconds", "num_train")}
    out["eval"] = {k: res[k] for k in ("arch", "epochs", "runs", "augmentation", "cutmix", "validations",
                                       "num_test", "region_views", "batch", "lr", "weight_decay", "cutmix_p")}
    if result.region_views is not None:
        other = _accuracy(run, result, not use_views, archs[0])
        key = "without_region_views" if use_views else "with_region_views"
        out[key] = {k: other[k] for k in ("accuracy_mean", "accuracy_std", "accuracy_runs", "num_train")}
        out["eval_seconds"] += other["eval_seconds"]
    out["architectures"] = {archs[0]: _arch_fields(res)}
    for arch in archs[1:]:
        other = _accuracy(run, result, use_views, arch)
        out["architectures"][arch] = _arch_fields(other)
        out["eval_seconds"] += other["eval_seconds"]
    return out


def reference_fields(run: Run) -> dict:
    """--method full: the summary's evaluation fields as accuracy_fields gives them, each network trained on the
    whole real training set (udd_fast/reference.py, cached), with where its numbers came from."""
    cfg, out = run.cfg, {}
    for arch in eval_archs(cfg.eval.eval_arch):
        ev = dataclasses.replace(cfg.eval, eval_arch=arch)
        run.log(f"full-data reference: {arch}, {ev.eval_epochs} epochs x {ev.eval_runs} runs")
        res = full_data_accuracy(run.data, ev, cfg.run.seed, None, run.progress, run.log)  # $UDD_FAST_CACHE
        run.log(f"accuracy ({arch}, full training set, last epoch): {res['accuracy_mean']:.2f} +- "
                f"{res['accuracy_std']:.2f} % over {ev.eval_runs} runs ({res['source']})")
        if not out:
            out = {k: res[k] for k in ("accuracy_mean", "accuracy_std", "accuracy_runs", "best_mean", "best_runs",
                                       "eval_seconds", "num_train")}
            out["eval"] = {k: res[k] for k in ("arch", "epochs", "runs", "augmentation", "cutmix", "validations",
                                               "num_test", "batch", "lr", "weight_decay", "cutmix_p")}
            out["eval"]["region_views"] = False
            out["architectures"], out["reference"] = {}, {}
        else:
            out["eval_seconds"] += res["eval_seconds"]
        out["architectures"][arch] = _arch_fields(res)
        out["reference"][arch] = {k: res[k] for k in ("source", "cache", "trained_seconds")}
    return out


def _arch_fields(res: dict) -> dict:
    return {k: res[k] for k in ("accuracy_mean", "accuracy_std", "accuracy_runs", "best_mean", "epochs", "runs",
                                "eval_seconds")}


def _accuracy(run: Run, result: Result, with_views: bool, arch: str):
    cfg = run.cfg
    ev = dataclasses.replace(cfg.eval, eval_arch=arch,
                             eval_epochs=arch_eval_epochs(arch, cfg.eval.eval_epochs, cfg.run.ipc, result.factor))
    views = "with region views" if with_views else "formations only"
    run.log(f"evaluating ({views}): {arch}, {ev.eval_epochs} epochs x {ev.eval_runs} runs")
    res = accuracy_of(result, run.data, ev, cfg.run.seed, run.progress, with_region_views=with_views)
    run.log(f"accuracy ({arch}, {views}, last epoch): {res['accuracy_mean']:.2f} +- "
            f"{res['accuracy_std']:.2f} % over {ev.eval_runs} runs {['%.2f' % a for a in res['accuracy_runs']]}; "
            f"best of {res['validations']} tests {res['best_mean']:.2f}; {res['eval_seconds']:.1f} s")
    return res


def build_summary(run: Run, outcome: LoopOutcome, evaluation: dict) -> dict:
    """summary.json: the run's settings, the set, timings, what the phases noted, and the evaluation."""
    cfg = run.cfg
    summary = {
        "dataset": run.data.info.name, "ipc": cfg.run.ipc, "method": cfg.run.method, "preset": cfg.run.preset,
        "device": cfg.run.device, "seed": cfg.run.seed, "factor": cfg.match.factor, "iterations": outcome.iterations,
        "inner_loop": cfg.match.inner_loop, "form": cfg.match.form, "world_size": run.comm.world,
        "final_matching_loss": outcome.final_loss, "distill_seconds": outcome.seconds,
        "loop_seconds": outcome.loop_seconds,
        "num_stored": 0 if outcome.images is None else int(outcome.images.shape[0]), "version": __version__,
        "torch": torch.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "accuracy_mean": None, "accuracy_std": None, "accuracy_runs": [], "eval_seconds": 0.0,
        "history": outcome.history,
    }
    summary.update(run.notes)
    summary.update(evaluation)
    return summary
