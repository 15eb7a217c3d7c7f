"""The checks of a run's settings against its data and its ranks, and the config they make; all run
before anything is written (the settings on their own: config.check_settings)."""
import math
import sys
from pathlib import Path

from ..config import NOT_DISTILLED, SELECTIONS, Config, UsageError, build_config
from ..data import NO_TEST_IMAGES
from ..decode import factor_problem
from ..distributed import Comm
from ..engine import trajectory_problem
from ..region_search import window_grid


def check_out_beside_data(out: Path, dataset):
    """An output directory inside an image-folder dataset would add the run's PNGs to the data (every
    later read of the folder would fail on them): refused."""
    source = getattr(dataset, "path", None)  # a DataSource's user data path (None: a built-in, data in memory)
    if source is not None and dataset.kind == "folder":
        out, root = Path(out).resolve(), source.resolve()
        if out == root or root in out.parents:
            raise UsageError(f"--out {out} lies inside the image-folder dataset {root}: the run's pictures would "
                             f"become part of the data; choose an --out outside it")


def note_network_update_cost(cfg: Config, data):
    """More network-update images per inner iteration than the data holds is allowed, and its cost said."""
    n, num_train = cfg.net.n_data, int(data.images.shape[0])
    if cfg.run.method not in NOT_DISTILLED and n > num_train:
        batches = -(-n // cfg.match.batch_real)
        total = batches * cfg.match.inner_loop * cfg.match.iterations
        print(f"note: --n-data {n} is {n / num_train:.1f} epochs of the {num_train} training images in every inner "
              f"iteration: {batches} network batches each, {total} in the run", file=sys.stderr)


def run_config(settings: dict, info, resumed: bool, distributed: bool = False) -> Config:
    """A resumed run's config as given; a new one's from the dataset, the preset and the settings given
    (a distributed run's form is the batched one unless given)."""
    if resumed:
        return Config.from_flat(settings)
    values = dict(settings)
    if distributed and not values.get("form"):
        values["form"] = "batched"
    ipc, preset, factor = values.pop("ipc"), values.pop("preset"), values.pop("factor")
    if values["method"] in NOT_DISTILLED:  # real images, stored whole (or the full-data reference)
        factor = 1
    return build_config(info.name, ipc, preset, info.size, info.size_base, factor=factor,
                        num_classes=info.num_classes, **values)


def check_world(cfg: Config, comm: Comm, num_classes: int):
    """What a distributed run cannot do, said before any work starts."""
    if not comm.distributed:
        return
    if cfg.run.method in NOT_DISTILLED:
        raise UsageError(f"--method {cfg.run.method} has nothing to distribute: run it in one process "
                         f"(not {comm.world})")
    if cfg.match.form != "batched":
        raise UsageError(f"--form {cfg.match.form} is one process's loop; a distributed run ({comm.world} ranks) "
                         f"uses the batched form")
    if cfg.eval.eval_every:  # rank 0 alone evaluates: the others would wait past --dist-timeout
        raise UsageError(f"--eval-every is one process's: a distributed run ({comm.world} ranks) evaluates at the end")
    if cfg.match.cuda_graphs == "on" or cfg.match.compile == "on":  # auto means off under torchrun
        flag = "--cuda-graphs on" if cfg.match.cuda_graphs == "on" else "--compile on"
        raise UsageError(f"{flag} runs in one process: a distributed run ({comm.world} ranks) all-reduces the "
                         f"network update's gradients per batch, on the plain path")
    if comm.world > num_classes:
        raise UsageError(f"{comm.world} ranks for {num_classes} classes: every rank needs at least one class; "
                         f"start at most {num_classes} processes")


def check_test_split(cfg: Config, data):
    """Data without test images can be distilled but never evaluated: a run that would evaluate it
    (--eval-runs, --eval-every) is refused before any work."""
    if int(data.test_images.shape[0]) == 0 and (cfg.eval.eval_runs or cfg.eval.eval_every):
        raise UsageError(NO_TEST_IMAGES.format(name=data.info.name) + ": an evaluation needs some. Add a test "
                         "split (a folder's train/ and test/, an .npz's test_images and test_labels), or distill "
                         "without evaluating: --eval-runs 0 and no --eval-every")


def _check_class_sizes(data, need_per_class, what, fix):
    counts = data.class_counts.cpu()
    small = int(counts.argmin())
    if int(counts[small]) < need_per_class:
        raise UsageError(f"{what} needs {need_per_class} training images per class, but class {small} "
                         f"({data.info.class_names[small]}) has {int(counts[small])}: {fix}")


def check_geometry(cfg: Config, data):
    """The settings against the data: tile and window sizes, images per class. Before any work."""
    size, ipc, factor = data.info.size, cfg.run.ipc, cfg.match.factor
    if cfg.run.method == "full":  # every training image, whatever the classes hold
        return
    if cfg.run.method in SELECTIONS:
        _check_class_sizes(data, ipc, f"--method {cfg.run.method} with IPC {ipc}", "lower --ipc")
        return
    problem = factor_problem(size, factor)
    if problem:
        raise UsageError(f"--factor {factor} {problem}")
    if cfg.run.method == "udd" and cfg.udd.policy != "none" and factor > 1 and cfg.match.decode_type not in ("", "single"):
        raise UsageError(f"--decode-type {cfg.match.decode_type} decodes formations of several tile sizes; UDD's region "
                         f"search works on one: use --decode-type single with --method udd (or --method idc)")
    if cfg.run.method == "udd" and cfg.udd.policy != "none":
        tile = math.ceil(size / factor)
        try:
            window_grid(tile, cfg.udd.region_size)
        except ValueError as e:
            raise UsageError(f"--region-size {cfg.udd.region_size}: {e} ({size}-pixel images, factor {factor}); "
                             f"use at least {0.5 / tile:.3g}") from None
    _check_class_sizes(data, ipc * factor ** 2, f"the mix initialization (IPC {ipc} x factor^2 {factor ** 2})",
                       "lower --ipc or --factor")
    batch = cfg.match.batch_real
    _check_class_sizes(data, batch, f"a real batch of {batch} per class", "lower --batch-real")
    problem = trajectory_problem(cfg)
    if problem:
        raise UsageError(problem)
