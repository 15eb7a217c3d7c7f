"""End to end on real data: `smoke` distill + evaluate, every artifact checked; bad input refused
with a clear message, exit status 2 and nothing written."""
import gzip
import io
import json
import shutil
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import assert_same_run, require_dataset, shared_data_dir
from helpers import check_grid
from udd_fast import __version__
from udd_fast.data import download
from udd_fast.distill import main as distill_main
from udd_fast.evaluate import main as evaluate_main

SUMMARY_KEYS = {"dataset", "ipc", "method", "preset", "device", "seed", "accuracy_mean", "accuracy_std",
                "accuracy_runs", "distill_seconds", "eval_seconds", "iterations"}


def _distill(tmp_path, data_dir, *extra, name="run"):
    out = tmp_path / name
    rc = distill_main(["--preset", "smoke", "--data-dir", str(data_dir), "--out", str(out), "--no-progress",
                       "--no-download", *extra])
    return rc, out


def _check_artifacts(out, dataset, ipc, k, channels, size, factor, method="idc", iterations=2, device="cpu"):
    saved = torch.load(out / "distilled.pt", weights_only=True)
    x, y = saved["images"], saved["labels"]
    assert x.dtype == torch.float32 and x.shape == (k * ipc, channels, size, size)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(y, torch.arange(k).repeat_interleave(ipc))
    assert saved["factor"] == factor and saved["dataset"] == dataset and saved["version"] == __version__
    assert saved["boxes"] is None and saved["config"]["ipc"] == ipc and len(saved["mean"]) == channels
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert (summary["dataset"], summary["ipc"], summary["method"], summary["preset"]) == (dataset, ipc, method, "smoke")
    assert summary["iterations"] == iterations and summary["device"] == device
    runs = summary["accuracy_runs"]
    assert len(runs) == 2 and all(0.0 <= a <= 100.0 for a in runs)
    assert summary["accuracy_mean"] == pytest.approx(np.mean(runs))
    assert summary["accuracy_std"] == pytest.approx(np.std(runs, ddof=1))
    assert summary["distill_seconds"] > 0 and summary["eval_seconds"] > 0
    check_grid(np.array(Image.open(out / "grid.png").convert("RGB")), x, factor, saved["dataset_info"]["class_names"])
    assert Image.open(out / "curves.png").size[0] > 300
    assert [p[0] for p in summary["history"]["loss"]] == list(range(1, iterations + 1))
    assert "<img" in (out / "report.html").read_text()
    log = (out / "log.txt").read_text()
    assert "accuracy" in log and "saved" in log
    assert not list(out.glob(".*.tmp"))
    return saved, summary


@pytest.mark.integration
def test_smoke_mnist_end_to_end(tmp_path, real_data_dir, device):
    rc, out = _distill(tmp_path, real_data_dir, "--dataset", "mnist", "--ipc", "1", "--seed", "3", "--device", device)
    assert rc == 0
    saved, _ = _check_artifacts(out, "mnist", 1, 10, 1, 28, 2, device=device)
    # distillation moved the images away from the mix initialization
    rc0, out0 = _distill(tmp_path, real_data_dir, "--dataset", "mnist", "--ipc", "1", "--seed", "3",
                         "--iterations", "0", "--eval-runs", "0", name="init")
    assert rc0 == 0
    init = torch.load(out0 / "distilled.pt", weights_only=True)["images"]
    assert (saved["images"] - init).abs().max() > 1e-4
    # evaluate the saved set again, with another architecture
    assert evaluate_main([str(out), "--arch", "resnet10_in", "--eval-runs", "1", "--eval-epochs", "2",
                          "--data-dir", str(real_data_dir), "--no-progress", "--device", device]) == 0
    res = json.loads((out / "eval_resnet10_in.json").read_text())
    assert res["arch"] == "resnet10_in" and len(res["accuracy_runs"]) == 1 and res["num_train"] == 40


@pytest.mark.integration
def test_smoke_cifar10_end_to_end(tmp_path, real_data_dir, device):
    require_dataset(real_data_dir, "cifar-10-batches-py")
    rc, out = _distill(tmp_path, real_data_dir, "--dataset", "cifar10", "--ipc", "2", "--device", device)
    assert rc == 0
    _check_artifacts(out, "cifar10", 2, 10, 3, 32, 2, device=device)


@pytest.mark.integration
def test_random_baseline_stores_real_images(tmp_path, real_data_dir, mnist_data):
    rc, out = _distill(tmp_path, real_data_dir, "--dataset", "mnist", "--ipc", "3", "--method", "random")
    assert rc == 0
    saved, summary = _check_artifacts(out, "mnist", 3, 10, 1, 28, 1, method="random", iterations=0)
    # every stored image is a real training image of its class, and they are distinct
    real = mnist_data.images.float() / 255
    for img, lab in zip(saved["images"], saved["labels"]):
        hits = (real == img).flatten(1).all(1).nonzero().flatten()
        assert len(hits) >= 1 and bool((mnist_data.labels[hits] == lab).all())
    assert len({tuple(v.flatten().tolist()) for v in saved["images"]}) == 30


@pytest.mark.integration
def test_same_seed_same_result(tmp_path, real_data_dir, device):
    args = ("--dataset", "mnist", "--ipc", "1", "--eval-runs", "0", "--device", device, "--seed", "7",
            "--iterations", "1")
    _, a = _distill(tmp_path, real_data_dir, *args, name="a")
    _, b = _distill(tmp_path, real_data_dir, *args, name="b")
    _, c = _distill(tmp_path, real_data_dir, *args[:-4], "--seed", "8", "--iterations", "1",
                    name="c")
    xa, xb, xc = (torch.load(p / "distilled.pt", weights_only=True)["images"] for p in (a, b, c))
    # CUDA: one outer iteration's float32 reordering (atomics, cuDNN) moves pixels by about lr x the
    # gradient's relative error (~1e-6 x 2e-3), far below 1e-5 (not yet measured on a GPU); another
    # seed moves them by 2.1e-3 (measured on the CPU, 2026-12-03)
    assert_same_run(xa, xb, device, cuda_tol=1e-5)
    assert (xa - xc).abs().max() > 1e-3


# -- bad input: a clear message, exit status 2, nothing half-written ---------------------------------

def _refused(capsys, out, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2, err
    for n in needles:
        assert n in err, err
    assert not out.exists() or not any(p.name in ("distilled.pt", "summary.json", "grid.png") for p in out.iterdir())
    return err


def test_missing_data_names_the_files(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out = _distill(tmp_path, empty, "--dataset", "mnist")
    _refused(capsys, out, rc, "train-images-idx3-ubyte", str(empty))
    assert not out.exists()


def _mnist_copy(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(shared_data_dir() / "MNIST", root / "MNIST")
    return root


def test_truncated_file_is_named(tmp_path, capsys):
    root = _mnist_copy(tmp_path)
    f = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    rc, out = _distill(tmp_path, root, "--dataset", "mnist")
    _refused(capsys, out, rc, "train-images-idx3-ubyte.gz")
    assert not out.exists()


def test_corrupt_file_is_named(tmp_path, capsys):
    root = _mnist_copy(tmp_path)
    f = root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\xff" * 100))
    rc, out = _distill(tmp_path, root, "--dataset", "mnist")
    _refused(capsys, out, rc, "train-labels-idx1-ubyte")


def test_md5_mismatch_on_download(tmp_path, capsys, monkeypatch):
    root = _mnist_copy(tmp_path)
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setattr(download, "_urlopen", lambda url, timeout: io.BytesIO(b"not the file"))
    out = tmp_path / "run"
    rc = distill_main(["--dataset", "mnist", "--preset", "smoke", "--data-dir", str(root), "--out", str(out),
                       "--no-progress"])
    _refused(capsys, out, rc, "md5", "t10k-labels-idx1-ubyte")
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_no_network_names_the_files(tmp_path, capsys, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download, "_urlopen", offline)
    out = tmp_path / "run"
    rc = distill_main(["--dataset", "fashionmnist", "--preset", "smoke", "--data-dir", str(tmp_path / "d"),
                       "--out", str(out), "--no-progress"])
    _refused(capsys, out, rc, "train-images-idx3-ubyte", "FashionMNIST")


@pytest.mark.parametrize("ipc", ["0", "-2"])
def test_ipc_must_be_positive(tmp_path, capsys, real_data_dir, ipc):
    rc, out = _distill(tmp_path, real_data_dir, "--dataset", "mnist", "--ipc", ipc)
    _refused(capsys, out, rc, "--ipc")


def test_ipc_larger_than_a_class(tmp_path, capsys):
    # a user dataset whose smallest class has 7 training images: IPC 2 x 4 formations needs 8
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), [12, 7, 12])
    images = rng.integers(0, 256, size=(len(labels), 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=images, labels=labels, test_images=images[:6], test_labels=labels[:6])
    out = tmp_path / "run"
    rc = distill_main(["--dataset", str(path), "--ipc", "2", "--preset", "smoke", "--batch-real", "4",
                       "--out", str(out), "--no-progress"])
    _refused(capsys, out, rc, "class 1", "has 7")
    # while IPC 1 (4 images per class) runs through
    rc = distill_main(["--dataset", str(path), "--ipc", "1", "--preset", "smoke", "--batch-real", "4",
                       "--out", str(out), "--no-progress", "--eval-runs", "1"])
    assert rc == 0 and (out / "distilled.pt").exists()


def test_unknown_dataset(tmp_path, capsys):
    rc, out = _distill(tmp_path, tmp_path, "--dataset", "imagenet-22k")
    _refused(capsys, out, rc, "imagenet-22k", "cifar10")


def test_unwritable_output_directory(tmp_path, capsys, real_data_dir):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    out = blocker / "run"
    rc = distill_main(["--dataset", "mnist", "--preset", "smoke", "--data-dir", str(real_data_dir), "--out",
                       str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "not writable" in err and str(out) in err
    assert blocker.read_text() == "a file, not a directory"


def test_impossible_flags(tmp_path, capsys, real_data_dir):
    for flags, needle in ((["--method", "random", "--cfc-weight", "1"], "--method udd"), (["--factor", "0"], "--factor"),
                          (["--lr-img", "-1"], "--lr-img"), (["--inner-loop", "0"], "--inner-loop")):
        rc, out = _distill(tmp_path, real_data_dir, "--dataset", "mnist", *flags)
        _refused(capsys, out, rc, needle)
    if not torch.cuda.is_available():
        rc, out = _distill(tmp_path, real_data_dir, "--dataset", "mnist", "--device", "cuda")
        _refused(capsys, out, rc, "CUDA")


def test_evaluate_refuses_a_corrupt_set(tmp_path, capsys, real_data_dir):
    bad = tmp_path / "distilled.pt"
    bad.write_bytes(b"\x80\x04 not a torch file")
    assert evaluate_main([str(bad), "--data-dir", str(real_data_dir), "--no-progress"]) == 2
    assert "not a readable distilled set" in capsys.readouterr().err
    assert evaluate_main([str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.integration
def test_several_evaluation_networks_in_a_run(tmp_path, real_data_dir):
    """--eval-arch convnet,convnet_bn: the summary's accuracy is the first network's, `architectures` gives
    each one's mean +- std, the report page a row per network and curves.png a panel more."""
    rc, out = _distill(tmp_path, real_data_dir, "--dataset", "mnist", "--ipc", "1", "--iterations", "1",
                       "--eval-arch", "convnet,convnet_bn")
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    archs = summary["architectures"]
    assert list(archs) == ["convnet", "convnet_bn"] and summary["eval"]["arch"] == "convnet"
    assert archs["convnet"]["accuracy_runs"] == summary["accuracy_runs"]
    for r in archs.values():
        assert len(r["accuracy_runs"]) == 2 and r["accuracy_mean"] == pytest.approx(np.mean(r["accuracy_runs"]))
    assert archs["convnet_bn"]["accuracy_runs"] != archs["convnet"]["accuracy_runs"]
    html = (out / "report.html").read_text()
    assert "<td>convnet_bn</td>" in html and "Per evaluation network" in html
    one = tmp_path / "one"
    assert distill_main(["--preset", "smoke", "--data-dir", str(real_data_dir), "--out", str(one), "--no-progress",
                         "--no-download", "--dataset", "mnist", "--ipc", "1", "--iterations", "1"]) == 0
    assert list(json.loads((one / "summary.json").read_text())["architectures"]) == ["convnet"]
    assert Image.open(out / "curves.png").size[1] > Image.open(one / "curves.png").size[1]  # the extra panel
    rc, bad = _distill(tmp_path, real_data_dir, "--dataset", "mnist", "--eval-arch", "convnet,vgg", name="bad")
    assert rc == 2 and not bad.exists()
