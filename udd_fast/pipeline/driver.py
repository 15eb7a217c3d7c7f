"""The loop driver: UDD's proxy, then the engine's outer iterations with what a run adds around them
(history, checkpoints, the short evaluations, progress, a stop on a signal or a failed rank), or for
--method random the selection of real images. It reads the engine through its state and its report."""
import dataclasses
import shlex
import time

import torch

from .. import distributed, logs, rng
from ..checkpoint import CheckpointError, save_checkpoint
from .. import coreset
from ..config import SELECTIONS, eval_archs
from ..distributed import RankFailure
from ..engine import Engine
from ..protocol import accuracy_of, test_count
from ..proxy import load_or_train_proxy
from ..result import Result
from ..train import accuracy
from ..version import __version__
from .records import Interrupted, LoopOutcome, Run
from .runlog import StopOnSignal


# -- the UDD proxy ----------------------------------------------------------------------------------------

def load_proxy(run: Run):
    """UDD's proxy network in run.proxy: rank 0 loads or trains it, every rank gets the same network."""
    run.proxy, facts = run.comm.from_main(lambda: _cpu_proxy(*_main_proxy(run)))
    run.notes.update(facts)


def _cpu_proxy(proxy, facts):
    return proxy.cpu(), facts  # sent to the other ranks as CPU tensors; the Engine moves it to its device


def _main_proxy(run: Run):
    """The UDD proxy network (cached) and its facts for the summary."""
    cfg, data, udd = run.cfg, run.data, run.cfg.udd
    t = time.time()
    proxy, how = load_or_train_proxy(data, udd.proxy_epochs, cfg.run.seed, cfg.eval.eval_aug, cfg.eval.eval_cutmix,
                                     udd.proxy_cache or None, run.progress, run.log)
    n_test = test_count(data, cfg.eval.eval_test_limit)
    acc = accuracy(proxy, data.test_images[:n_test], data.test_labels[:n_test], data.mean, data.std) if n_test else None
    run.log(f"proxy network ({how}, {udd.proxy_epochs} epochs): "
            + (f"test accuracy {acc:.2f} % on {n_test} images" if n_test else "no test images to measure it on"))
    facts = {"proxy": {"epochs": udd.proxy_epochs, "source": how, "test_accuracy": acc,
                       "seconds": time.time() - t},
             "regions": {k: getattr(udd, k) for k in ("policy", "region_size", "region_every", "jitter_sigma",
                                                      "jitter_draws")},
             "cfc": {"weight": udd.cfc_weight, "tau": udd.cfc_tau}}
    return proxy, facts


# -- the loop ---------------------------------------------------------------------------------------------

def random_selection(data, ipc, seed):
    """IPC random real images per class (keyed): the same stored pixels as a distilled set, factor 1."""
    K = data.info.num_classes
    keys = rng.subkeys(rng.key(seed, "random_selection"), torch.arange(K, device=data.device))
    perm = rng.permutation(keys, data.class_indices.shape[1], valid=data.class_counts)[:, :ipc]
    idx = torch.gather(data.class_indices, 1, perm).reshape(-1)
    return data.to_float(idx), data.labels[idx]


def drive(run: Run) -> LoopOutcome:
    """The loop's outcome (None on ranks other than 0): IPC real images per class for --method random,
    herding or kcenter (udd_fast/coreset.py, by the proxy network's features), else the outer iterations from where the run stands (LoopDriver)."""
    cfg, t0 = run.cfg, time.time()
    if cfg.run.method in SELECTIONS:
        if cfg.run.method == "random":
            images, labels = random_selection(run.data, cfg.run.ipc, cfg.run.seed)
        else:
            images, labels = coreset.select(cfg.run.method, run.proxy.to(run.data.device), run.data, cfg.run.ipc)
        seconds = time.time() - t0
        run.log(f"distillation done in {seconds:.1f} s")
        return LoopOutcome(images, labels, None, 0, None, seconds, None)
    return LoopDriver(run).drive(t0)


class LoopDriver:
    """The engine's outer iterations with a checkpoint every cfg.run.checkpoint_every of them;
    SIGINT/SIGTERM stops at the next inner iteration and saves the last outer boundary (Interrupted), a
    failed rank stops every rank likewise (RankFailure)."""

    def __init__(self, run: Run):
        self.run, self.cfg = run, run.cfg
        self.engine = Engine(run.cfg, run.data, log=run.log, proxy=run.proxy, comm=run.comm)
        self.history = {"loss": [], "mue": [], "accuracy": []}
        self.eval_seconds = 0.0
        self.bar = None
        self.snap = None  # the state of the last completed outer boundary: what a stop saves
        self.measures_mue = run.proxy is not None and run.comm.is_main  # UDD's mUE history, on rank 0

    def start(self):
        """The history and state a resumed run continues from (the initial mUE for a new one)."""
        run, engine = self.run, self.engine
        report = engine.report(mue=self.measures_mue)
        run.log(f"loop: {report.loop}")
        if self.measures_mue:
            run.notes["mue_initial"] = report.mue  # the images are the initialization until a state is loaded
            self.history["mue"].append([0, report.mue])
        ck = run.request.resume
        if ck is not None:
            try:
                engine.load_state(ck["state"])
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{ck['path']}: its state does not fit this run ({e})") from None
            done = engine.report().outer_done
            run.notes["resumed_from_outer"] = done
            self.history = {k: [p for p in v if p[0] <= done] for k, v in (ck.get("history") or self.history).items()}
            run.log(f"resumed from {ck['path']} after {done} outer iterations"
                    + ("" if ck["version"] == __version__ else f" (saved by udd_fast {ck['version']})"))
        self.snap = engine.state()

    def checkpoint(self, state):
        run = self.run
        if not run.comm.is_main:
            return run.out / "checkpoint.pt"
        return save_checkpoint(run.out, state, self.cfg.to_dict(), run.facts, str(run.request.source), run.data_dir,
                               not run.request.download, self.history)

    def on_outer(self, outer, loss, seconds):
        """After each outer iteration: the history, a short evaluation, a checkpoint, progress."""
        run, cfg, iterations = self.run, self.cfg, self.cfg.match.iterations
        self.history["loss"].append([outer + 1, loss])
        report = self.engine.report(mue=self.measures_mue)
        if self.measures_mue:
            self.history["mue"].append([outer + 1, report.mue])
        if cfg.eval.eval_every and (outer + 1) % cfg.eval.eval_every == 0:
            t = time.time()
            self.history["accuracy"].append([outer + 1, short_evaluation(run, report)])
            self.eval_seconds += time.time() - t
        self.snap = self.engine.state()
        every = cfg.run.checkpoint_every
        if every and (report.outer_done % every == 0 or report.outer_done == iterations):
            self.checkpoint(self.snap)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4g}")
        if (outer + 1) % max(1, iterations // 10) == 0 or outer + 1 == iterations:
            run.log(f"outer {outer + 1}/{iterations}: matching loss {loss:.5g} ({seconds:.1f} s)")

    def drive(self, t0) -> LoopOutcome:
        run, cfg, comm, engine = self.run, self.cfg, self.run.comm, self.engine
        iterations = cfg.match.iterations
        self.start()
        snap_start = self.snap["outer_done"]
        self.bar = logs.bar(iterations, "distill", run.progress, initial=snap_start, unit="outer")
        resume = f"resume with: {run.launcher} --resume {shlex.quote(str(run.out))}"
        t_loop = time.time()
        with StopOnSignal() as stop:
            try:
                images = engine.iterate(self.on_outer, should_stop=stop)
                if stop.requested:
                    raise KeyboardInterrupt
            except KeyboardInterrupt:
                self.bar.close()
                path = self.checkpoint(self.snap)
                msg = (f"stopped after {self.snap['outer_done']}/{iterations} outer iterations; state saved in {path}; "
                       f"{resume}")
                run.log(msg)
                raise Interrupted(msg) from None
            except RankFailure as e:
                self.bar.close()
                path = self.checkpoint(self.snap)  # every rank holds the last merged boundary; rank 0 writes it
                msg = (f"{e}; the state after {self.snap['outer_done']}/{iterations} outer iterations is in {path}; "
                       f"{resume} (any number of processes)")
                run.log(msg)
                raise RankFailure(msg) from None
        self.bar.close()
        loop_seconds = time.time() - t_loop - self.eval_seconds
        report = engine.report()
        if comm.distributed:
            run.notes["communication"] = _comm_summary(comm, cfg, report.outer_done - int(snap_start), loop_seconds)
            run.log(f"communication per inner iteration (payload bytes, rank {comm.rank}): "
                    f"{run.notes['communication']['payload_bytes_per_inner_iteration']:.0f}")
        if not comm.is_main:
            return None  # rank 0 saves and evaluates
        if run.proxy is not None:
            run.notes.update(mue_final=engine.mue(images), policy_share=report.policy_share,
                             policy_counts=report.policy_counts)
            run.log(f"mUE {run.notes['mue_initial']:.4f} -> {run.notes['mue_final']:.4f}; policy share "
                    f"{run.notes['policy_share']}")
        seconds = time.time() - t0
        run.log(f"distillation done in {seconds:.1f} s")
        if self.eval_seconds:
            run.notes["eval_every_seconds"] = self.eval_seconds
        return LoopOutcome(images, report.labels, report.region_views, iterations,
                           report.last_loss if iterations else None, seconds, loop_seconds, self.history)


def short_evaluation(run: Run, report) -> float:
    """--eval-every: the set as it stands, trained on once for a fifth of the evaluation epochs (the same
    network initialization and batches each time, so the points compare); the test accuracy in %."""
    ev = dataclasses.replace(run.cfg.eval, eval_runs=1, eval_epochs=max(1, run.cfg.eval.eval_epochs // 5),
                             eval_arch=eval_archs(run.cfg.eval.eval_arch)[0])
    result = Result(report.images, report.labels, run.cfg.match.factor, report.region_views, run.data.info, run.cfg)
    res = accuracy_of(result, run.data, ev, run.cfg.run.seed, progress=False)
    run.log(f"outer {report.outer_done}: short evaluation ({ev.eval_arch}, {ev.eval_epochs} epochs, 1 run) "
            f"{res['accuracy_mean']:.2f} % ({res['eval_seconds']:.1f} s)")
    return res["accuracy_mean"]


def _comm_summary(comm, cfg, outer_done, seconds):
    """Payload bytes this rank handed to collectives during the loop, by purpose and per iteration."""
    inner_loop = cfg.match.inner_loop
    inner = max(1, outer_done * inner_loop)
    total = sum(comm.bytes_by_purpose.values())
    return {"world_size": comm.world, "rank": comm.rank, "backend": distributed.backend_name(),
            "outer_iterations": outer_done, "inner_iterations": outer_done * inner_loop,
            "payload_bytes_by_purpose": dict(comm.bytes_by_purpose),
            "calls_by_purpose": dict(comm.calls_by_purpose),
            "payload_bytes_per_inner_iteration": total / inner,
            "loop_seconds": seconds, "seconds_per_inner_iteration": seconds / inner}
