"""The reliability battery: bad input, interruption and full disks, tried as a new user
would. A table of refused commands, each with its exit status, what the message must name (the file
or the flag) and what must be left on disk: every file under the test's directory byte-identical
(nothing created, nothing changed, no code run from a data file). Then the cases a table cannot
hold: full disks, resuming from elsewhere, --force, default names, changed data, signals, modes."""
import errno
import hashlib
import json
import os
import pickle
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from helpers import REPO, cifar_batch, dump, interrupt_after_a_checkpoint, write_tiny_cifar10, write_tiny_mnist
from udd_fast import artifacts
from udd_fast import data as data_mod
from udd_fast.data import cifar, download, user
from udd_fast.artifacts import INCOMPLETE, save_distilled
from udd_fast.checkpoint import load_checkpoint
from udd_fast.config import build_config
from udd_fast.distill import main as distill_main
from udd_fast.evaluate import main as evaluate_main
from udd_fast.export import main as export_main

K, PER_CLASS, SIZE = 3, 20, 16  # the tiny dataset: 3 classes x 20 training images of 16 x 16, 6 test images
SMOKE = ("--preset", "smoke", "--inner-loop", "1", "--no-progress")
REAL_ATOMIC = artifacts._atomic


def write_npz(path, seed=0, k=K, per_class=PER_CLASS):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), per_class)
    images = rng.integers(0, 256, (len(labels), SIZE, SIZE, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels, test_images=test, test_labels=np.arange(6) % k)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny .npz and one finished run on it (1 outer iteration, no evaluation)."""
    root = tmp_path_factory.mktemp("tiny")
    npz = write_npz(root / "tiny.npz")
    run = root / "run"
    assert distill_main(["--dataset", str(npz), *SMOKE, "--iterations", "1", "--eval-runs", "0", "--out", str(run)]) == 0
    return SimpleNamespace(npz=npz, run=run)


def _offline(url, timeout):
    raise AssertionError(f"a test tried the network: {url}")


@pytest.fixture
def ctx(tmp_path, monkeypatch, tiny, request):
    """A clean place per case: HOME, the working directory and all inputs under tmp_path, no network."""
    for name in ("home", "cwd"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("UDD_FAST_DATA", "UDD_FAST_CACHE", "UDD_FAST_ALLOW_PARTIAL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(download, "_urlopen", _offline)
    return SimpleNamespace(tmp=tmp_path, npz=tiny.npz, tiny_run=tiny.run, run=tmp_path / "run", out=tmp_path / "out",
                           data=tmp_path / "data", marker=tmp_path / "MARKER", monkeypatch=monkeypatch,
                           request=request, mnist=None)


def snapshot(root: Path) -> dict:
    """Every file and folder under root: content hash and mode (symlinks as their target)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", stat.S_IMODE(p.stat().st_mode))
            else:
                out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
    return out


def tmp_files(path: Path) -> list:
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".write-test"))


# -- ways to prepare a bad input ----------------------------------------------------------------------

class Evil:
    """Unpickling this runs os.mkdir(marker): proof that code from a data file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def partial(ctx):
    ctx.monkeypatch.setenv("UDD_FAST_ALLOW_PARTIAL", "1")


def evil_cifar10_meta(ctx):
    partial(ctx)
    write_tiny_cifar10(ctx.data)
    dump(ctx.data / "cifar-10-batches-py" / "batches.meta",
         {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072, "x": Evil(ctx.marker)})


def evil_cifar100_meta(ctx):
    partial(ctx)
    folder = ctx.data / "cifar-100-python"
    rng = np.random.default_rng(2)
    dump(folder / "train", cifar_batch(rng.integers(0, 256, (200, 3, 32, 32), dtype=np.uint8), np.arange(200) % 100,
                                       "fine_labels"))
    dump(folder / "test", cifar_batch(rng.integers(0, 256, (100, 3, 32, 32), dtype=np.uint8), np.arange(100),
                                      "fine_labels"))
    dump(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "x": Evil(ctx.marker)})


def fake_set(run: Path, dataset, k, channels, size, **info_kw):
    """A well-formed distilled.pt as an older udd_fast wrote it (no data facts)."""
    run.mkdir(parents=True, exist_ok=True)
    info = data_mod.DatasetInfo(dataset, channels, size, k, (0.5,) * channels, (0.25,) * channels,
                                tuple(f"c{i}" for i in range(k)), 32)
    cfg = build_config(dataset, 1, "smoke", size, 32)
    images = torch.rand(k, channels, size, size)
    save_distilled(run / "distilled.pt", images, torch.arange(k), 2, info, cfg.to_dict())


def evil_cifar10_batch_for_evaluate(ctx):
    partial(ctx)
    fake_set(ctx.run, "cifar10", 10, 3, 32)
    write_tiny_cifar10(ctx.data)
    folder = ctx.data / "cifar-10-batches-py"
    d = pickle.loads((folder / "data_batch_1").read_bytes())
    d["x"] = Evil(ctx.marker)
    dump(folder / "data_batch_1", d)


def wrapped_idx_header(ctx):
    partial(ctx)
    raw = ctx.data / "MNIST" / "raw"
    write_tiny_mnist(raw, gz=False)
    # dims 2^31 x 2^31 x 4: their product is 2^64, 0 in 64-bit arithmetic, so a header-only file "fits"
    header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2 ** 31, 2 ** 31, 4))
    (raw / "train-images-idx3-ubyte").write_bytes(header)


def image_folder(ctx, bad_name, bad_image, **save):
    for cls in ("a", "b"):
        (ctx.data / cls).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(ctx.data / cls / f"{i}.png")
    bad_image.save(ctx.data / "b" / bad_name, **save)


def transparent_rgba(ctx):
    arr = np.full((8, 8, 4), 200, np.uint8)
    arr[0, 0, 3] = 0
    image_folder(ctx, "9.png", Image.fromarray(arr))


def transparent_palette(ctx):
    im = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    image_folder(ctx, "9.png", im, transparency=5)


def transparent_gray_alpha(ctx):
    arr = np.full((8, 8, 2), 100, np.uint8)
    arr[3, 3, 1] = 128
    image_folder(ctx, "9.png", Image.fromarray(arr))


def non_square_image(ctx):
    image_folder(ctx, "9.png", Image.fromarray(np.zeros((8, 6, 3), np.uint8)))


def copy_run(ctx):
    shutil.copytree(ctx.tiny_run, ctx.run)


def tamper(name, change):
    """Copy the finished tiny run, then edit one of its torch files (as a user or a bad disk might)."""
    def prepare(ctx):
        copy_run(ctx)
        d = torch.load(ctx.run / name, weights_only=True)
        d = change(d) or d
        torch.save(d, ctx.run / name)
    return prepare


def set_key(key, value):
    def change(d):
        d[key] = value(d) if callable(value) else value
    return change


def set_state(key, value):
    def change(d):
        d["state"][key] = value(d["state"]) if callable(value) else value
    return change


def set_config(key, value):
    def change(d):
        d["config"][key] = value
    return change


def nan_at(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


def truncate(name):
    def prepare(ctx):
        copy_run(ctx)
        p = ctx.run / name
        p.write_bytes(p.read_bytes()[:300])
    return prepare


def one_class_npz(ctx):
    rng = np.random.default_rng(0)
    np.savez(ctx.tmp / "one.npz", images=rng.integers(0, 256, (30, 8, 8), dtype=np.uint8), labels=np.zeros(30, int))


def npz_without_labels(ctx):
    np.savez(ctx.tmp / "bad.npz", images=np.zeros((12, 8, 8), np.uint8))


def text_file(ctx):
    (ctx.tmp / "data.txt").write_text("not a dataset")


def file_as_out(ctx):
    ctx.out.write_text("a file where the output directory should go")


def tiny_mnist_truncated_gz(ctx):
    partial(ctx)
    raw = ctx.data / "MNIST" / "raw"
    write_tiny_mnist(raw)
    p = raw / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:40])


def cifar_truncated_batch(ctx):
    partial(ctx)
    write_tiny_cifar10(ctx.data)
    p = ctx.data / "cifar-10-batches-py" / "data_batch_3"
    p.write_bytes(p.read_bytes()[:500])


def cifar100_without_names(ctx):
    partial(ctx)
    folder = ctx.data / "cifar-100-python"
    imgs = np.zeros((100, 3, 32, 32), np.uint8)
    dump(folder / "train", cifar_batch(imgs, np.arange(100), "fine_labels"))
    dump(folder / "test", cifar_batch(imgs, np.arange(100), "fine_labels"))
    dump(folder / "meta", {"coarse_label_names": ["x"] * 20})


def svhn_label_11(ctx):
    partial(ctx)
    imgs = np.zeros((32, 32, 3, 20), np.uint8)
    for split in ("train", "test"):
        y = (np.arange(20) % 10 + 1).reshape(-1, 1)
        if split == "train":
            y[4] = 11
        (ctx.data / "svhn").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(ctx.data / "svhn" / f"{split}_32x32.mat", {"X": imgs, "y": y.astype(np.uint8)})


def empty_data_dir(ctx):
    ctx.data.mkdir()


def real_mnist(ctx):
    ctx.mnist = ctx.request.getfixturevalue("real_data_dir")


def both(*fns):
    def prepare(ctx):
        for f in fns:
            f(ctx)
    return prepare


# -- the table -----------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    argv: tuple  # distill's flags; evaluate's when tool == "evaluate" (placeholders: ctx's fields)
    needles: tuple  # what the message must contain (the file or the flag)
    prepare: object = None
    tool: str = "distill"
    rc: int = 2


NPZ = ("--dataset", "{npz}", *SMOKE, "--out", "{out}")
RESUME = ("--resume", "{run}", "--no-progress")
EVAL = ("{run}", "--no-progress", "--eval-runs", "1", "--eval-epochs", "1")
SET = "{run}/distilled.pt"
CK = "{run}/checkpoint.pt"

CASES = [
    # 1. no code runs from a data file (CIFAR-10 and CIFAR-100 readers; distill and evaluate)
    Case("b01-cifar10-meta-runs-code", ("--dataset", "cifar10", "--data-dir", "{data}", *SMOKE, "--out", "{out}"),
         ("{data}/cifar-10-batches-py/batches.meta", "posix.mkdir", "refused"), evil_cifar10_meta),
    Case("b01-cifar100-meta-runs-code", ("--dataset", "cifar100", "--data-dir", "{data}", *SMOKE, "--out", "{out}"),
         ("{data}/cifar-100-python/meta", "refused"), evil_cifar100_meta),
    Case("b01-evaluate-batch-runs-code", (*EVAL, "--data-dir", "{data}"),
         ("{data}/cifar-10-batches-py/data_batch_1", "refused"), evil_cifar10_batch_for_evaluate, tool="evaluate"),
    # 2. images that would be clipped or whose colours are undefined
    Case("b02-transparent-rgba", ("--dataset", "{data}", *SMOKE, "--out", "{out}"), ("{data}/b/9.png", "transparent"),
         transparent_rgba),
    Case("b02-transparent-palette", ("--dataset", "{data}", *SMOKE, "--out", "{out}"), ("{data}/b/9.png", "transparent"),
         transparent_palette),
    Case("b02-transparent-gray-alpha", ("--dataset", "{data}", *SMOKE, "--out", "{out}"),
         ("{data}/b/9.png", "transparent"), transparent_gray_alpha),
    # 3. an idx header whose size product wraps around in 64 bits
    Case("b03-idx-header-wraps", ("--dataset", "mnist", "--data-dir", "{data}", *SMOKE, "--out", "{out}"),
         ("{data}/MNIST/raw/train-images-idx3-ubyte", "header"), wrapped_idx_header),
    # 4. evaluate checks every field of distilled.pt before it reads any data
    Case("b04-label-10", EVAL, (SET, "labels lie in [1, 3], outside [0, 3)"), tamper("distilled.pt", set_key("labels", lambda d: d["labels"] + 1)),
         tool="evaluate"),
    Case("b04-label-minus-1", EVAL, (SET, "labels lie in [-1, 1]"),
         tamper("distilled.pt", set_key("labels", lambda d: d["labels"] - 1)), tool="evaluate"),
    Case("b04-images-list", EVAL, (SET, "images must be a floating-point tensor, found list"),
         tamper("distilled.pt", set_key("images", lambda d: d["images"].tolist())), tool="evaluate"),
    Case("b04-config-not-dict", EVAL, (SET, "config is a str, not a dict"), tamper("distilled.pt", set_key("config", "fast")),
         tool="evaluate"),
    Case("b04-factor-0", EVAL, (SET, "factor 0: must be >= 1"), tamper("distilled.pt", set_key("factor", 0)), tool="evaluate"),
    Case("b04-factor-100", EVAL, (SET, "factor 100: gives 1-pixel tiles"), tamper("distilled.pt", set_key("factor", 100)), tool="evaluate"),
    Case("p-evaluate-images-nan", EVAL, (SET, "images contain NaN"), tamper("distilled.pt", set_key("images", lambda d: nan_at(d["images"]))),
         tool="evaluate"),
    Case("b04-images-outside-0-1", EVAL, (SET, "outside [0, 1]"),
         tamper("distilled.pt", set_key("images", lambda d: d["images"] * 3)), tool="evaluate"),
    Case("b04-class-names", EVAL, (SET, "class_names must be 3 strings"),
         tamper("distilled.pt", lambda d: d["dataset_info"].update(class_names=["a"])), tool="evaluate"),
    Case("b04-mean-length", EVAL, (SET, "mean must be 3 finite numbers"), tamper("distilled.pt", set_key("mean", [0.5])), tool="evaluate"),
    Case("b04-std-zero", EVAL, (SET, "std must be positive"), tamper("distilled.pt", set_key("std", [0.0, 0.2, 0.2])),
         tool="evaluate"),
    Case("b04-config-epochs-text", EVAL[:2], (SET, "eval_epochs is 'many'"),
         tamper("distilled.pt", set_config("eval_epochs", "many")), tool="evaluate"),
    Case("b04-config-arch", EVAL, (SET, "eval_arch must be one of"), tamper("distilled.pt", set_config("eval_arch", "vit")),
         tool="evaluate"),
    Case("b04-boxes", EVAL, (SET, "region boxes"),
         tamper("distilled.pt", lambda d: d.update(boxes=torch.tensor([[0, 0, 99, 99]]), region_src=torch.tensor([0]))),
         tool="evaluate"),
    Case("b04-not-a-dict", EVAL, (SET, "holds a list, not a dict"), tamper("distilled.pt", lambda d: [d]), tool="evaluate"),
    # 5. --resume checks every field of checkpoint.pt before it reads any data
    Case("b05-config-not-dict", RESUME, (CK, "config is a list, not a dict"), tamper("checkpoint.pt", set_key("config", [1, 2]))),
    Case("b05-config-lr-negative", RESUME, (CK, "lr_img must be > 0"), tamper("checkpoint.pt", set_config("lr_img", -1.0))),
    Case("b05-outer-done-beyond", RESUME, (CK, "outer_done 7 is outside [0, 1]"), tamper("checkpoint.pt", set_state("outer_done", 7))),
    Case("b05-outer-done-negative", RESUME, (CK, "outer_done -1 is outside"), tamper("checkpoint.pt", set_state("outer_done", -1))),
    Case("b05-net-batch-huge", RESUME, (CK, "net_batch 1000000000 is outside"), tamper("checkpoint.pt", set_state("net_batch", 10 ** 9))),
    Case("b05-net-batch-text", RESUME, (CK, "net_batch '3' is outside"), tamper("checkpoint.pt", set_state("net_batch", "3"))),
    Case("b05-images-nan", RESUME, (CK, "state S contains NaN"), tamper("checkpoint.pt", set_state("S", lambda st: nan_at(st["S"])))),
    Case("b05-momentum-nan", RESUME, (CK, "state buf contains NaN"),
         tamper("checkpoint.pt", set_state("buf", lambda st: nan_at(st["buf"])))),
    Case("b05-images-shape", RESUME, (CK, "state S must be a float tensor of shape (3, 3, 16, 16)"), tamper("checkpoint.pt", set_state("S", lambda st: st["S"][:1]))),
    Case("b05-loss-nan", RESUME, (CK, "last_loss nan must be a finite"), tamper("checkpoint.pt", set_state("last_loss", float("nan")))),
    Case("b05-policy-counts", RESUME, (CK, "policy_counts must hold"),
         tamper("checkpoint.pt", set_state("policy_counts", {"response": -2}))),
    Case("b05-boxes-without-udd", RESUME, (CK, "searches no regions"),
         tamper("checkpoint.pt", set_state("region_boxes", torch.tensor([[0, 0, 4, 4]] * 12)))),
    Case("b05-data-not-dict", RESUME, (CK, "facts) must be a dict"), tamper("checkpoint.pt", set_key("data", "mnist"))),
    # 6. flags checked against the data's geometry before any work (the proxy is never trained)
    Case("b06-region-size-0.01", (*NPZ, "--method", "udd", "--region-size", "0.01", "--proxy-cache", "{tmp}/pc"),
         ("--region-size 0.01", "0-pixel window")),
    Case("b06-factor-8-at-28px", ("--dataset", "mnist", "--data-dir", "{mnist}", *SMOKE, "--factor", "8", "--out",
                                  "{out}"), ("--factor 8", "padding"), real_mnist),
    Case("b06-cfc-weight-inf", (*NPZ, "--method", "udd", "--cfc-weight", "inf", "--proxy-cache", "{tmp}/pc"),
         ("--cfc-weight", "finite")),
    Case("b06-lr-img-inf", (*NPZ, "--lr-img", "inf"), ("--lr-img", "finite")),
    Case("b06-proxy-epochs-inf", (*NPZ, "--method", "udd", "--proxy-epochs", "inf", "--proxy-cache", "{tmp}/pc"),
         ("--proxy-epochs", "finite")),
    Case("b06-jitter-sigma-inf", (*NPZ, "--method", "udd", "--jitter-sigma", "inf", "--proxy-cache", "{tmp}/pc"),
         ("--jitter-sigma", "finite")),
    Case("b06-dist-timeout-inf", (*NPZ, "--dist-timeout", "inf"), ("--dist-timeout",)),
    # 10. an output directory that holds another run
    Case("b10-out-holds-a-run", ("--dataset", "{npz}", *SMOKE, "--out", "{run}"),
         ("{run}", "holds another run", "checkpoint.pt", "summary.json", "--force"), copy_run),
    Case("b10-out-holds-a-stopped-run", ("--dataset", "{npz}", *SMOKE, "--out", "{run}"),
         ("{run}", "holds another run", "INCOMPLETE", "--force"),
         lambda ctx: (ctx.run.mkdir(), (ctx.run / "log.txt").write_text("x"), (ctx.run / INCOMPLETE).write_text(""))),
    # weak points
    Case("w-one-class", ("--dataset", "{tmp}/one.npz", *SMOKE, "--out", "{out}"), ("{tmp}/one.npz", "at least 2 classes"),
         one_class_npz),
    Case("w-batch-real-hint", (*NPZ, "--batch-real", "25"), ("batch of 25", "lower --batch-real")),
    Case("w-random-iterations", (*NPZ, "--method", "random", "--iterations", "5"), ("--iterations", "--method random")),
    Case("w-random-factor", (*NPZ, "--method", "random", "--factor", "3"), ("--factor", "--method random")),
    Case("w-force-with-resume", (*RESUME, "--force"), ("--force", "--resume"), copy_run),
    # the README's existing promises
    Case("p-unknown-dataset", ("--dataset", "imagenet-22k", *SMOKE, "--out", "{out}"), ("imagenet-22k", "cifar10")),
    Case("p-missing-files", ("--dataset", "mnist", "--data-dir", "{data}", "--no-download", *SMOKE, "--out", "{out}"),
         ("{data}/MNIST/raw/train-images-idx3-ubyte",), empty_data_dir),
    Case("p-ipc-0", (*NPZ, "--ipc", "0"), ("--ipc",)),
    Case("p-eval-runs-negative", (*NPZ, "--eval-runs", "-1"), ("--eval-runs",)),
    Case("p-checkpoint-every-negative", (*NPZ, "--checkpoint-every", "-1"), ("--checkpoint-every",)),
    Case("p-factor-0", (*NPZ, "--factor", "0"), ("--factor",)),
    Case("p-udd-flag-without-udd", (*NPZ, "--policy", "jitter"), ("--policy", "--method udd")),
    Case("p-npz-without-labels", ("--dataset", "{tmp}/bad.npz", *SMOKE, "--out", "{out}"), ("{tmp}/bad.npz", "labels"),
         npz_without_labels),
    Case("p-not-a-dataset-file", ("--dataset", "{tmp}/data.txt", *SMOKE, "--out", "{out}"), ("{tmp}/data.txt", ".npz"),
         text_file),
    Case("p-non-square-image", ("--dataset", "{data}", *SMOKE, "--out", "{out}"), ("{data}/b/9.png", "square"),
         non_square_image),
    Case("p-truncated-gz", ("--dataset", "mnist", "--data-dir", "{data}", *SMOKE, "--out", "{out}"),
         ("{data}/MNIST/raw/t10k-images-idx3-ubyte.gz",), tiny_mnist_truncated_gz),
    Case("p-truncated-pickle", ("--dataset", "cifar10", "--data-dir", "{data}", *SMOKE, "--out", "{out}"),
         ("{data}/cifar-10-batches-py/data_batch_3", "cannot unpickle"), cifar_truncated_batch),
    Case("p-cifar100-meta-without-names", ("--dataset", "cifar100", "--data-dir", "{data}", *SMOKE, "--out", "{out}"),
         ("{data}/cifar-100-python/meta", "fine_label_names"), cifar100_without_names),
    Case("p-svhn-label-11", ("--dataset", "svhn", "--data-dir", "{data}", *SMOKE, "--out", "{out}"),
         ("{data}/svhn/train_32x32.mat", "1..10"), svhn_label_11),
    Case("p-out-is-a-file", (*NPZ,), ("{out}", "not writable"), file_as_out),
    Case("p-resume-nothing", ("--resume", "{tmp}/nothing", "--no-progress"), ("{tmp}/nothing", "does not exist")),
    Case("p-resume-other-ipc", (*RESUME, "--ipc", "2"), ("--ipc 2 differs", CK), copy_run),
    Case("p-resume-other-dataset", (*RESUME, "--dataset", "mnist"), ("--dataset mnist differs", CK), copy_run),
    Case("p-resume-truncated", RESUME, (CK, "not a readable checkpoint"), truncate("checkpoint.pt")),
    Case("p-evaluate-nothing", ("{tmp}/nothing",), ("{tmp}/nothing", "does not exist"), tool="evaluate"),
    Case("p-evaluate-truncated", EVAL, (SET, "not a readable distilled set"), truncate("distilled.pt"), tool="evaluate"),
    Case("p-evaluate-runs-0", ("{run}", "--eval-runs", "0"), ("--eval-runs",), copy_run, tool="evaluate"),
]
if not torch.cuda.is_available():
    CASES.append(Case("p-no-cuda", (*NPZ, "--device", "cuda"), ("--device cuda", "CUDA")))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(case, ctx, capsys):
    if case.prepare:
        case.prepare(ctx)
    fill = {k: str(v) for k, v in vars(ctx).items() if isinstance(v, Path)}
    argv = [a.format(**fill) for a in case.argv]
    before = snapshot(ctx.tmp)
    rc = (evaluate_main if case.tool == "evaluate" else distill_main)(argv)
    err = capsys.readouterr().err
    assert rc == case.rc, err
    for needle in case.needles:
        assert needle.format(**fill) in err, err
    assert "Traceback" not in err
    assert not ctx.marker.exists()  # nothing a data file asked for ran
    assert snapshot(ctx.tmp) == before  # nothing created, changed or half-written


# -- 1: what the restricted unpickler still reads ------------------------------------------------------

@pytest.mark.parametrize("protocol,names", [(2, "numpy.core"), (2, "numpy._core"), (4, "numpy._core"),
                                            (5, "numpy._core")])
def test_cifar_pickles_of_every_protocol_still_load(tmp_path, protocol, names):
    """Python 2 era pickles name numpy.core (numpy 1), re-packed ones numpy._core (numpy 2): both load,
    with numpy scalars and bytes keys, as the official format needs."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    obj = {b"data": data, b"labels": [1, 2, 3, 0], b"batch_label": b"tiny", b"n": np.int64(4)}
    raw = pickle.dumps(obj, protocol=protocol)
    if names == "numpy.core":
        assert b"numpy._core" in raw
        raw = raw.replace(b"numpy._core", b"numpy.core")
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)
    d = cifar._read_pickle(path)
    np.testing.assert_array_equal(d["data"], data)
    assert d["labels"] == [1, 2, 3, 0] and d["n"] == 4


# -- 2: 16-bit, palette and alpha images: scaled or converted, never clipped -----------------------------

def test_high_bit_depth_palette_and_alpha_images(tmp_path):
    v16 = np.array([[0, 257, 32896, 65535], [1000, 20000, 40000, 60000]] * 2, np.uint16)
    Image.fromarray(v16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    want16 = np.floor(v16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, np.full((4, 4), 255, np.uint8)])).save(tmp_path / "opaque.png")
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "pal.png")
    la = np.dstack([v16[:, :].astype(np.uint8), np.full((4, 4), 255, np.uint8)])
    Image.fromarray(la).save(tmp_path / "la.png")
    gray = user._read_image_files([tmp_path / "g16.png", tmp_path / "la.png"])
    assert gray.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(gray[0, 0], want16)  # old: converted via RGB, clipped to 255
    np.testing.assert_array_equal(gray[1, 0], la[:, :, 0])
    mixed = user._read_image_files([tmp_path / "g16.png", tmp_path / "opaque.png", tmp_path / "pal.png"])
    assert mixed.shape == (3, 3, 4, 4)
    np.testing.assert_array_equal(mixed[0], np.repeat(want16[None], 3, 0))
    np.testing.assert_array_equal(mixed[1], rgb.transpose(2, 0, 1))
    np.testing.assert_array_equal(mixed[2], np.asarray(pal.convert("RGB")).transpose(2, 0, 1))


# -- 7, 8: a full disk -------------------------------------------------------------------------------

def _fail_writes(monkeypatch, name, at_call=1, err=errno.ENOSPC):
    """Make the at_call-th atomic write of `name` fail as a full disk does."""
    real, calls = artifacts._atomic, []

    def atomic(path, data):
        if Path(path).name == name:
            calls.append(path)
            if len(calls) == at_call:
                raise OSError(err, os.strerror(err))
        return real(path, data)
    monkeypatch.setattr(artifacts, "_atomic", atomic)
    return calls


def _printed_resume(err) -> list:
    cmd = shlex.split(err.split("resume with: ")[-1].splitlines()[0])
    assert cmd[:3] == ["python", "-m", "udd_fast.distill"], cmd
    return cmd[3:]


def test_disk_full_at_a_checkpoint(ctx, capsys, real_data_dir):
    """The second checkpoint cannot be written: exit 2 naming it, the first kept, the directory marked
    incomplete, and the printed command resumes, though the run used --data-dir (8): here HOME's
    cache is empty and the network is off."""
    out = ctx.tmp / "run"
    _fail_writes(ctx.monkeypatch, "checkpoint.pt", at_call=2)
    rc = distill_main(["--dataset", "mnist", "--data-dir", str(real_data_dir), *SMOKE, "--iterations", "2",
                       "--eval-runs", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"cannot write {out}/checkpoint.pt: no space left" in err and "Traceback" not in err
    assert load_checkpoint(out)["state"]["outer_done"] == 1
    assert (out / INCOMPLETE).exists() and not (out / "distilled.pt").exists() and not (out / "summary.json").exists()
    assert tmp_files(out) == []
    ctx.monkeypatch.setattr(artifacts, "_atomic", REAL_ATOMIC)  # space freed
    assert distill_main(_printed_resume(err)) == 0, capsys.readouterr().err
    assert load_checkpoint(out)["state"]["outer_done"] == 2
    assert not (out / INCOMPLETE).exists() and (out / "summary.json").exists()



def test_disk_full_before_the_summary(ctx, capsys):
    """distilled.pt is written, summary.json is not: the run is marked incomplete, evaluate refuses it
    (naming the marker), and the printed command completes it."""
    out = ctx.tmp / "run"
    _fail_writes(ctx.monkeypatch, "summary.json")
    rc = distill_main(["--dataset", str(ctx.npz), *SMOKE, "--iterations", "1", "--eval-runs", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"cannot write {out}/summary.json: no space left" in err, err
    assert (out / "distilled.pt").exists() and not (out / "summary.json").exists() and (out / INCOMPLETE).exists()
    assert evaluate_main([str(out), "--eval-runs", "1", "--eval-epochs", "1", "--no-progress"]) == 2
    assert str(out / INCOMPLETE) in capsys.readouterr().err
    ctx.monkeypatch.setattr(artifacts, "_atomic", REAL_ATOMIC)
    assert distill_main(_printed_resume(err)) == 0
    assert (out / "summary.json").exists() and not (out / INCOMPLETE).exists()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "curves.png", "distilled.pt", "grid.png",
                                                     "log.txt", "report.html", "summary.json"]


@pytest.mark.integration
def test_file_size_limit_in_a_real_process(ctx):
    """A real failed write (RLIMIT_FSIZE: EFBIG past 16 KiB) through torch's serializer: a clear
    message naming checkpoint.pt, exit 2, no traceback, no temporary file left, marked incomplete."""
    out = ctx.tmp / "run"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
            "from udd_fast.distill import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "--dataset", str(ctx.npz), *SMOKE, "--iterations", "2",
                        "--eval-runs", "0", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(REPO), HOME=str(ctx.tmp / "home"),
                                PYTHONDONTWRITEBYTECODE="1"))
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"cannot write {out}/checkpoint.pt: file too large" in r.stderr and "Traceback" not in r.stderr
    assert "no checkpoint was saved" in r.stderr
    assert (out / INCOMPLETE).exists() and not (out / "checkpoint.pt").exists() and tmp_files(out) == []


def test_evaluate_reports_a_full_disk(ctx, capsys):
    copy_run(ctx)
    _fail_writes(ctx.monkeypatch, "eval_convnet.json")
    rc = evaluate_main([str(ctx.run), "--eval-runs", "1", "--eval-epochs", "1", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 2 and f"cannot write {ctx.run}/eval_convnet.json: no space left" in cap.err
    assert json.loads(cap.out)["accuracy_runs"]  # the result itself is not lost
    assert not (ctx.run / "eval_convnet.json").exists()


# -- 9: data identified by resolved path and content, from any working directory ------------------------

def test_resume_from_another_directory(ctx, capsys):
    a, b = ctx.tmp / "a", ctx.tmp / "b"
    b.mkdir()
    npz = write_npz(a / "data.npz")
    os.chdir(a)
    assert distill_main(["--dataset", "data.npz", *SMOKE, "--iterations", "1", "--eval-runs", "0", "--out",
                         str(ctx.run)]) == 0
    os.chdir(b)
    assert distill_main(["--resume", str(ctx.run), "--iterations", "2", "--no-progress"]) == 0, capsys.readouterr().err
    assert distill_main(["--resume", str(ctx.run), "--dataset", str(npz), "--iterations", "3", "--no-progress"]) == 0
    assert distill_main(["--resume", str(ctx.run), "--dataset", "../a/data.npz", "--iterations", "3",
                         "--no-progress"]) == 0
    capsys.readouterr()
    write_npz(npz, seed=1)  # same path, other content
    assert distill_main(["--resume", str(ctx.run), "--iterations", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "fingerprint" in err and str(ctx.run / "checkpoint.pt") in err
    assert load_checkpoint(ctx.run)["state"]["outer_done"] == 3


# -- 10, 11: --force, and default output names -----------------------------------------------------------

def test_force_replaces_another_run(ctx):
    copy_run(ctx)
    (ctx.run / "eval_resnet10_bn.json").write_text("{}")
    (ctx.run / "notes.txt").write_text("the user's own file")
    old_log = (ctx.run / "log.txt").read_text()
    assert distill_main(["--dataset", str(ctx.npz), *SMOKE, "--iterations", "1", "--eval-runs", "0", "--seed", "5",
                         "--out", str(ctx.run), "--force"]) == 0
    log = (ctx.run / "log.txt").read_text()
    assert "replaced the previous run's files" in log and "eval_resnet10_bn.json" in log and old_log not in log
    assert not (ctx.run / "eval_resnet10_bn.json").exists() and (ctx.run / "notes.txt").exists()
    assert load_checkpoint(ctx.run)["config"].run.seed == 5
    assert json.loads((ctx.run / "summary.json").read_text())["seed"] == 5


def test_default_output_names_differ_per_dataset(ctx):
    for name in ("flowers", "digits"):
        write_npz(ctx.tmp / "cwd" / f"{name}.npz", seed=len(name))
        assert distill_main(["--dataset", f"{name}.npz", *SMOKE, "--iterations", "0", "--eval-runs", "0"]) == 0
    runs = sorted(p.name for p in (ctx.tmp / "cwd" / "runs").iterdir())
    assert runs == ["digits-ipc1-idc-smoke-s0", "flowers-ipc1-idc-smoke-s0"]
    for r in runs:
        summary = json.loads((ctx.tmp / "cwd" / "runs" / r / "summary.json").read_text())
        assert summary["dataset"].endswith(r.split("-")[0] + ".npz")


# -- 12: evaluate on data that changed since ---------------------------------------------------------------

def _png_folder(root, classes, n=20, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / c / f"{i:02d}.png")


def test_evaluate_refuses_changed_data(ctx, capsys):
    _png_folder(ctx.data, ("cat", "dog"))
    assert distill_main(["--dataset", str(ctx.data), *SMOKE, "--iterations", "1", "--eval-runs", "0",
                         "--out", str(ctx.run)]) == 0
    _png_folder(ctx.data, ("ant",), seed=1)  # a class folder added: "ant" sorts first, every label shifts
    capsys.readouterr()
    flags = ["--eval-runs", "1", "--eval-epochs", "1", "--no-progress"]
    assert evaluate_main([str(ctx.run), *flags]) == 2
    err = capsys.readouterr().err
    assert "num_classes 2 there, 3 here" in err and "class_names" in err and "--allow-data-mismatch" in err
    assert not (ctx.run / "eval_convnet.json").exists()
    assert evaluate_main([str(ctx.run), *flags, "--allow-data-mismatch"]) == 0
    warnings = json.loads((ctx.run / "eval_convnet.json").read_text())["warnings"]
    assert len(warnings) == 1 and "other data" in warnings[0]
    shutil.rmtree(ctx.data / "ant")
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(ctx.data / "dog" / "03.png")  # same classes, new pixels
    assert evaluate_main([str(ctx.run), *flags]) == 2
    assert "fingerprint" in capsys.readouterr().err


def test_evaluate_accepts_an_older_set_with_a_warning(ctx, capsys):
    """A distilled.pt from before data facts were saved: evaluated, with a warning that no fingerprint
    could be compared (class names and count still are)."""
    ds = data_mod.load_dataset(str(ctx.npz))
    fake_set(ctx.run, ds.info.name, K, 3, SIZE)
    assert evaluate_main([str(ctx.run), "--eval-runs", "1", "--eval-epochs", "1", "--no-progress"]) == 2
    assert "class_names" in capsys.readouterr().err  # fake_set names its classes c0..c2, the npz 0..2
    saved = torch.load(ctx.run / "distilled.pt", weights_only=True)
    saved["dataset_info"]["class_names"] = ["0", "1", "2"]
    torch.save(saved, ctx.run / "distilled.pt")
    assert evaluate_main([str(ctx.run), "--eval-runs", "1", "--eval-epochs", "1", "--no-progress"]) == 0
    res = json.loads((ctx.run / "eval_convnet.json").read_text())
    assert len(res["warnings"]) == 1 and "predates data fingerprints" in res["warnings"][0]
    assert res["num_test"] == 6


# -- weak points: signals, file modes, temporaries, the test count -------------------------------------

@pytest.mark.integration
def test_first_sigint_is_acknowledged_at_once(ctx):
    out = ctx.tmp / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(ctx.tmp / "home"))
    rc, err = interrupt_after_a_checkpoint([sys.executable, "-m", "udd_fast.distill", "--dataset", str(ctx.npz),
                                            *SMOKE, "--iterations", "100000", "--eval-runs", "0", "--out", str(out)],
                                           out, env, 300, cwd=REPO)
    assert rc == 130, err
    ack = err.find("SIGINT received: stopping at the end of the current inner iteration")
    assert 0 <= ack < err.find("stopped after"), err
    assert (out / INCOMPLETE).exists() and tmp_files(out) == []


def test_artifact_modes_follow_the_umask_and_the_test_count_is_true(ctx):
    old = os.umask(0o027)
    try:
        assert distill_main(["--dataset", str(ctx.npz), *SMOKE, "--iterations", "1", "--eval-runs", "1",
                             "--eval-epochs", "1", "--out", str(ctx.run)]) == 0
    finally:
        os.umask(old)
    for name in ("checkpoint.pt", "distilled.pt", "summary.json", "grid.png", "curves.png", "report.html", "log.txt"):
        assert stat.S_IMODE((ctx.run / name).stat().st_mode) == 0o640, name  # mkstemp alone gives 0600
    summary = json.loads((ctx.run / "summary.json").read_text())
    assert summary["eval"]["num_test"] == 6  # smoke's limit is 1000; the split holds 6


def test_stale_temporaries_are_removed(ctx):
    """A run killed mid-write leaves .<name>.<random>.tmp files; the next run into the directory
    (--resume or --force) removes them, and only them."""
    copy_run(ctx)
    stale = [".checkpoint.pt.k3j_x9a.tmp", ".summary.json.q1w2e3.tmp", ".write-test-ab12cd"]
    for name in stale + [".keep.tmp.txt"]:
        (ctx.run / name).write_bytes(b"half")
    assert distill_main(["--resume", str(ctx.run), "--iterations", "2", "--no-progress"]) == 0
    assert tmp_files(ctx.run) == [] and (ctx.run / ".keep.tmp.txt").exists()
    assert "removed temporary files a stopped run left" in (ctx.run / "log.txt").read_text()


# -- nothing lost, whoever else writes ---------------------------------------------------------------------

@pytest.mark.integration
def test_a_run_directory_belongs_to_one_process(ctx, capsys):
    """While a run goes, every other writer of its directory is refused with exit 2 naming the owner (a new
    run, --force, --resume, evaluate writing its results, export writing into it), and nothing there
    changes; when the run ends, its lock goes with it."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(ctx.tmp / "home"))
    proc = subprocess.Popen([sys.executable, "-m", "udd_fast.distill", "--dataset", str(ctx.npz), *SMOKE,
                             "--iterations", "100000", "--eval-runs", "0", "--out", str(ctx.run)],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (ctx.run / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        owner = f"pid {proc.pid}"
        others = [lambda: distill_main(["--dataset", str(ctx.npz), *SMOKE, "--iterations", "1", "--out", str(ctx.run)]),
                  lambda: distill_main(["--dataset", str(ctx.npz), *SMOKE, "--iterations", "1", "--out", str(ctx.run),
                                        "--force"]),
                  lambda: distill_main(["--resume", str(ctx.run), "--no-progress"]),
                  lambda: evaluate_main([str(ctx.run), "--allow-incomplete", "--eval-runs", "1", "--no-progress"]),
                  lambda: export_main([str(ctx.tiny_run), "--format", "npz", "--out", str(ctx.run / "set.npz")])]
        for other in others:
            before = {p.name for p in ctx.run.iterdir()}
            assert other() == 2
            err = capsys.readouterr().err
            assert "in use by another udd_fast process" in err and owner in err and str(ctx.run) in err, err
            assert {p.name for p in ctx.run.iterdir()} <= before  # nothing new (the run may rotate temporaries)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert not (ctx.run / artifacts.LOCK).exists()
    assert distill_main(["--resume", str(ctx.run), "--iterations", str(load_checkpoint(ctx.run)["state"]["outer_done"]),
                         "--no-progress"]) == 0  # the stopped run is free to resume


def test_a_stale_lock_is_reported_and_taken_over(ctx):
    """A lock file nobody holds (its process was killed) is taken over, and the run's log says whose it was."""
    ctx.run.mkdir()
    (ctx.run / artifacts.LOCK).write_text("pid 4194303 on gone-host since 2026-01-01T00:00:00\n")
    assert distill_main(["--dataset", str(ctx.npz), *SMOKE, "--iterations", "1", "--eval-runs", "0",
                         "--out", str(ctx.run)]) == 0
    log = (ctx.run / "log.txt").read_text()
    assert "took over the stale lock" in log and "pid 4194303 on gone-host" in log
    assert not (ctx.run / artifacts.LOCK).exists()


def test_a_refused_run_leaves_no_directory_and_no_lock(ctx, capsys):
    """The lock is taken before anything is checked, in a directory it creates: a run refused afterwards
    (here for a bad flag value against the data) removes both again."""
    out = ctx.tmp / "new" / "nested"
    assert distill_main(["--dataset", str(ctx.npz), *SMOKE, "--batch-real", "999", "--out", str(out)]) == 2
    assert "--batch-real" in capsys.readouterr().err
    assert not (ctx.tmp / "new").exists()


def test_holds_another_run_suggests_resume_only_with_a_checkpoint(ctx, capsys):
    copy_run(ctx)
    flags = ["--dataset", str(ctx.npz), *SMOKE, "--iterations", "1", "--out", str(ctx.run)]
    assert distill_main(flags) == 2
    assert "--resume" in capsys.readouterr().err
    (ctx.run / "checkpoint.pt").unlink()
    before = snapshot(ctx.run)
    assert distill_main(flags) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "--force" in err and "--resume" not in err
    assert snapshot(ctx.run) == before


def _small_folder(root, per_class=6):
    """Two classes of `per_class` 16-pixel PNGs, no train/test split: too few to hold every 10th out."""
    _png_folder(root, ("a", "b"), n=per_class)
    return root


def test_data_without_test_images_distills_but_is_never_evaluated(ctx, capsys):
    """Too small a folder to hold images out has no test split: it distills with --eval-runs 0 (and
    resumes), while anything that would evaluate it is refused up front, with exit 2, writing nothing."""
    data = _small_folder(ctx.data)
    for flags in ([], ["--eval-runs", "0", "--eval-every", "1"]):
        assert distill_main(["--dataset", str(data), *SMOKE, "--batch-real", "4", "--out", str(ctx.run), *flags]) == 2
        err = capsys.readouterr().err
        assert "has no test images" in err and "--eval-runs 0" in err, err
        assert not ctx.run.exists()
    assert distill_main(["--dataset", str(data), *SMOKE, "--batch-real", "4", "--iterations", "1", "--eval-runs", "0",
                         "--out", str(ctx.run)]) == 0
    summary = json.loads((ctx.run / "summary.json").read_text())
    assert summary["accuracy_mean"] is None and "eval" not in summary
    assert distill_main(["--resume", str(ctx.run), "--iterations", "2", "--no-progress"]) == 0  # a genuine checkpoint
    before = snapshot(ctx.run)
    assert evaluate_main([str(ctx.run), "--eval-runs", "1", "--no-progress"]) == 2
    assert "has no test images" in capsys.readouterr().err
    assert snapshot(ctx.run) == before


def _wrong_type(f):
    """A value of the wrong type for setting f: what a caller might pass by mistake."""
    kind = type(f.default)
    return {bool: [1, "on"], int: [1.5, True, "1"], float: ["x", None], str: [1, True]}[kind]


def test_every_api_setting_refuses_a_value_of_the_wrong_type(ctx, real_data_dir):
    """Each setting, given a value of another type (a float or bool for an int, a string for a number, a
    number for a string...), is refused with a UsageError naming it, before anything is written."""
    import udd_fast
    from udd_fast.config import UsageError, option_settings

    tried = 0
    for f in option_settings():
        for value in _wrong_type(f):
            if value is None:
                continue
            with pytest.raises(UsageError, match=rf"^{f.name}=.*must be"):
                udd_fast.distill_dataset("mnist", data_dir=real_data_dir, download=False, out=ctx.run,
                                         progress=False, **{f.name: value})
            tried += 1
            assert not ctx.run.exists(), f.name
    assert tried >= 2 * len(option_settings())


@pytest.mark.parametrize("named", [False, True])
@pytest.mark.parametrize("label", [2 ** 40, 2 ** 31 - 1])
def test_a_huge_label_is_refused_before_counting(ctx, capsys, label, named):
    """Against the training count, or the class names when the file has them, before anything counts."""
    path = ctx.data / "huge.npz"
    path.parent.mkdir()
    labels = np.arange(30) % 3
    labels[7] = label
    names = {"class_names": np.array(["a", "b", "c"])} if named else {}
    np.savez(path, images=np.zeros((30, SIZE, SIZE), np.uint8), labels=labels, **names)
    assert distill_main(["--dataset", str(path), *SMOKE, "--out", str(ctx.run)]) == 2
    err = capsys.readouterr().err
    assert (f"[0, {label}]" if named else f"labels reach {label}") in err and str(path) in err, err
    assert not ctx.run.exists()


def test_a_result_saved_over_its_own_directory_keeps_the_checkpoint_and_log(ctx):
    from udd_fast.result import Result

    copy_run(ctx)
    kept = {name: (ctx.run / name).read_bytes() for name in ("checkpoint.pt", "log.txt")}
    Result.load(ctx.run).save(ctx.run, force=True)
    assert {name: (ctx.run / name).read_bytes() for name in kept} == kept
    assert (ctx.run / "summary.json").exists() and not (ctx.run / INCOMPLETE).exists()
    assert distill_main(["--resume", str(ctx.run), "--iterations", "2", "--no-progress"]) == 0


# -- the weak points of the same battery: each a clear message or the right behaviour ----------------------

def _one_line(err):
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("what", ["random", "pickled"])
def test_a_file_that_is_not_an_artifact_is_refused_in_one_line(ctx, capsys, what):
    """Random bytes or a pickled object in place of distilled.pt or checkpoint.pt: one line naming the file
    and saying it is not a udd_fast artifact; torch's advice to load it unsafely is never relayed."""
    copy_run(ctx)
    for name, call in (("distilled.pt", lambda: evaluate_main([str(ctx.run), "--eval-runs", "1"])),
                       ("checkpoint.pt", lambda: distill_main(["--resume", str(ctx.run), "--no-progress"]))):
        path = ctx.run / name
        if what == "random":
            path.write_bytes(np.random.default_rng(0).bytes(4096))
        else:
            torch.save({"obj": Evil(ctx.marker)}, path)
        before = snapshot(ctx.tmp)
        assert call() == 2
        err = _one_line(capsys.readouterr().err)
        assert str(path) in err and "not a udd_fast artifact" in err and "weights_only" not in err
        assert not ctx.marker.exists() and snapshot(ctx.tmp) == before


def test_a_text_file_named_npz_is_not_called_pickled(ctx, capsys):
    path = ctx.tmp / "notes.npz"
    path.write_text("just some notes\n")
    assert distill_main(["--dataset", str(path), *SMOKE, "--out", str(ctx.run)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "not an .npz file" in err and "pickled" not in err and str(path) in err


def test_a_checkpoint_of_another_format_says_which_it_found(ctx, capsys):
    copy_run(ctx)
    d = torch.load(ctx.run / "checkpoint.pt", weights_only=True)
    d["format"] = "udd_fast.checkpoint/9"
    torch.save(d, ctx.run / "checkpoint.pt")
    assert distill_main(["--resume", str(ctx.run), "--no-progress"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "udd_fast.checkpoint/9" in err and "udd_fast.checkpoint/1" in err


def test_a_checkpoint_key_this_version_does_not_know_is_said(ctx, capsys):
    copy_run(ctx)
    d = torch.load(ctx.run / "checkpoint.pt", weights_only=True)
    d["optimizer_v2"] = {"lr": 1.0}
    d["state"]["ema"] = torch.zeros(1)
    torch.save(d, ctx.run / "checkpoint.pt")
    assert distill_main(["--resume", str(ctx.run), "--iterations", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "optimizer_v2, state.ema" in err and "does not know" in err


def test_out_inside_an_image_folder_dataset_is_refused(ctx, capsys):
    _png_folder(ctx.data, ("cat", "dog"))
    before = snapshot(ctx.tmp)
    for out in (ctx.data / "runs" / "x", ctx.data, ctx.data / "cat" / "run"):
        assert distill_main(["--dataset", str(ctx.data), *SMOKE, "--out", str(out)]) == 2
        err = _one_line(capsys.readouterr().err)
        assert "inside the image-folder dataset" in err and str(ctx.data.resolve()) in err
    assert snapshot(ctx.tmp) == before


def test_a_network_update_bigger_than_the_data_says_what_it_costs(ctx, capsys):
    assert distill_main(["--dataset", str(ctx.npz), *SMOKE, "--iterations", "1", "--eval-runs", "0", "--n-data", "600",
                         "--batch-real", "8", "--out", str(ctx.run)]) == 0
    err = capsys.readouterr().err
    assert "note: --n-data 600 is 10.0 epochs of the 60 training images" in err and "75 network batches each" in err


def test_grid_rows_are_labelled_by_index_and_every_name_is_in_the_report(ctx):
    from udd_fast.pictures import LABEL_CHARS, row_label
    from udd_fast.report import report_html

    names = ["golden retriever puppy", "golden retriever adult", "猫", "Straße"]
    labels = [row_label(k, n) for k, n in enumerate(names)]
    assert labels == ["0 golden retriever", "1 golden retriever", "2", "3 Straße"]
    assert len(set(labels)) == len(labels) and all(len(s) <= LABEL_CHARS for s in labels)
    page = report_html({}, {}, {}, names)
    for k, n in enumerate(names):
        assert f"<td class=\"num\">{k}</td><td>{n}</td>" in page


def test_result_load_reads_each_set_with_its_own_summary_and_bounds_it(ctx):
    from udd_fast.artifacts import ArtifactError
    from udd_fast.result import Result

    copy_run(ctx)
    other = ctx.tmp / "other"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"seed": 12345}))
    (other / "distilled.pt").symlink_to(ctx.run / "distilled.pt")  # the set of another run, linked
    r = Result.load(other)
    assert r.summary == json.loads((ctx.run / "summary.json").read_text()) and r.run_dir == str(ctx.run.resolve())
    (other / "distilled.pt").unlink()
    shutil.copy(ctx.run / "distilled.pt", other / "distilled.pt")
    (other / "summary.json").unlink()
    (other / "summary.json").symlink_to("/dev/zero")
    with pytest.raises(ArtifactError, match="not a regular file"):
        Result.load(other)
    (other / "summary.json").unlink()
    (other / INCOMPLETE).write_text("")
    with pytest.raises(ArtifactError, match="marked incomplete"):
        Result.load(other)
    assert Result.load(other, allow_incomplete=True).incomplete


def test_a_folder_export_removes_what_a_killed_export_left(ctx):
    from udd_fast import export

    dead = ctx.tmp / ".set.4194303-0badc0de.tmp"  # no process has that pid: its export was killed
    live = ctx.tmp / f".set.{os.getpid()}-0badc0de.tmp"  # this process: an export still going
    for d in (dead, live):
        d.mkdir()
        (d / "00000.png").write_bytes(b"half")
    export.export_set(ctx.tiny_run, "folder", ctx.tmp / "set")
    assert not dead.exists() and live.exists() and (ctx.tmp / "set" / export.MARKER).exists()


@pytest.mark.integration
@pytest.mark.parametrize("tool,sig", [("evaluate", signal.SIGINT), ("evaluate", signal.SIGTERM),
                                      ("export", signal.SIGTERM)])
def test_a_signal_stops_evaluate_and_export_in_one_line(ctx, tool, sig):
    """SIGINT or SIGTERM during evaluate or export: exit 130 and one line, no traceback, nothing written."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(ctx.tmp / "home"))
    copy_run(ctx)
    if tool == "evaluate":
        cmd = [sys.executable, "-m", "udd_fast.evaluate", str(ctx.run), "--eval-runs", "1", "--eval-epochs", "100000"]
        started = "it/s]"  # its progress bar, once an epoch has been timed: the training is under way
    else:
        cmd = [sys.executable, "-c", "import time, udd_fast.export as e; e.decoded_set = lambda r, f=e.decoded_set: "
               "(print('decoding', flush=True), time.sleep(600), f(r))[2]; import sys; "
               f"sys.exit(e.main(['{ctx.run}', '--format', 'folder', '--out', '{ctx.tmp / 'set'}']))"]
        started = "decoding"
    before = snapshot(ctx.run)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stream = proc.stderr if tool == "evaluate" else proc.stdout
        seen, deadline = "", time.time() + 300
        while started not in seen and time.time() < deadline and proc.poll() is None:
            seen += os.read(stream.fileno(), 4096).decode(errors="replace")
        assert started in seen, seen
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    last = [line for line in err.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last.startswith("interrupted:") and "Traceback" not in err, err
    assert snapshot(ctx.run) == before and not (ctx.tmp / "set").exists()
    assert not list(ctx.tmp.glob(".set.*"))


@pytest.mark.parametrize("make", [lambda: torch.zeros(30, 8, 8, device="meta"),
                                  lambda: torch.rand(30, 8, 8).bfloat16().clamp(0, 1)])
def test_api_images_of_any_tensor_kind_get_a_data_error_or_work(ctx, make):
    import udd_fast
    from udd_fast.data import DataError

    images = make()
    labels = torch.arange(30) % 3
    if images.device.type == "meta":
        with pytest.raises(DataError, match="meta"):
            udd_fast.distill_dataset(images, labels, out=ctx.run)
        assert not ctx.run.exists()
    else:
        from udd_fast.data import from_arrays
        ds = from_arrays(images, labels)  # half precision is widened, never a raw TypeError
        assert ds.train_images.dtype == np.uint8 and ds.info.num_classes == 3
