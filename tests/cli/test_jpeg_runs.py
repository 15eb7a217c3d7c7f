"""Whole runs on the JPEG sets (issue 23): a smoke distillation and evaluation at 64 px (Tiny-ImageNet) and
128 px (ImageNet-10, IDC's classes), for idc and udd, a resume, memory-mapped training images, IDC's
ResNetAP-10 with --early, and the flags' checks. The sets are written small, in the official layouts, from
real CIFAR-10 images (helpers.write_tiny_imagenet, write_imagenet)."""
import json
import os

import pytest
import torch

from helpers import write_imagenet, write_tiny_imagenet
from udd_fast.data.imagenet import IDC_SUBSETS
from udd_fast.distill import main as distill_main

# smoke, made smaller still: a 128-pixel ConvNet-5 step costs about 0.8 GMAC per image (2 cores: seconds)
SMOKE = ("--preset", "smoke", "--ipc", "1", "--no-progress", "--no-download", "--inner-loop", "1", "--batch-real", "4",
         "--n-data", "8", "--eval-epochs", "2", "--eval-runs", "1")


@pytest.fixture(scope="module")
def jpeg_data(tmp_path_factory, cifar_arrays):
    """A data directory with Tiny-ImageNet (3 classes) and ImageNet (IDC's ImageNet-10 classes), and an image
    cache of the module's own."""
    root = tmp_path_factory.mktemp("jpegdata")
    write_tiny_imagenet(root, cifar_arrays, classes=3, per_class=16, per_class_val=4)
    write_imagenet(root, cifar_arrays, IDC_SUBSETS["imagenet10"], per_class=16, per_class_val=2)
    old = os.environ.get("UDD_FAST_CACHE")
    os.environ["UDD_FAST_CACHE"] = str(root / "cache")
    yield root
    if old is None:
        del os.environ["UDD_FAST_CACHE"]
    else:
        os.environ["UDD_FAST_CACHE"] = old


def _run(root, tmp, *flags):
    out = tmp / "run"
    code = distill_main([*SMOKE, "--data-dir", str(root), "--out", str(out), "--proxy-cache", str(tmp / "proxy"),
                         *flags] if "udd" in flags else [*SMOKE, "--data-dir", str(root), "--out", str(out), *flags])
    return code, out


def _three_classes(tmp):
    """ImageNet by a class list: 3 of IDC's classes (a run at 128 px stays seconds)."""
    lst = tmp / "classes.txt"
    lst.write_text("\n".join(IDC_SUBSETS["imagenet10"][:3]))
    return ["--dataset", "imagenet", "--classes", str(lst)]


@pytest.mark.integration
# UDD at 128 px (a minute) is slow: UDD's JPEG path runs at 64 px, 128 px runs with IDC
@pytest.mark.parametrize("size,method", [(64, "idc"), (64, "udd"), (128, "idc"),
                                         pytest.param(128, "udd", marks=pytest.mark.slow)])
def test_smoke_distillation_and_evaluation(jpeg_data, tmp_path, method, size):
    """Tiny-ImageNet at 64 px (ConvNet-4), ImageNet classes at 128 px (ConvNet-5 here: ResNetAP-10 below)."""
    data = ["--dataset", "tinyimagenet"] if size == 64 else [*_three_classes(tmp_path), "--size", "128"]
    code, out = _run(jpeg_data, tmp_path, *data, "--method", method, "--net-arch", "convnet", "--eval-arch", "convnet")
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    classes = 3
    name = "tinyimagenet" if size == 64 else f"imagenet:{tmp_path / 'classes.txt'}@128"
    assert summary["dataset"] == name and summary["eval"]["arch"] == "convnet"
    assert 0 <= summary["accuracy_mean"] <= 100 and summary["eval"]["num_test"] == classes * (4 if size == 64 else 2)
    d = torch.load(out / "distilled.pt", weights_only=True)
    assert d["images"].shape == (classes, 3, size, size) and d["config"]["net_arch"] == "convnet"
    if method == "udd":  # the region search ran at this size: boxes inside the stored images
        boxes = d["boxes"]
        assert boxes.shape == (classes * 4, 4) and int(boxes.max()) <= size and int(boxes.min()) >= 0


@pytest.mark.integration
def test_resume_at_64_px_equals_a_straight_run(jpeg_data, tmp_path):
    flags = ["--dataset", "tinyimagenet", "--method", "udd", "--net-arch", "convnet", "--eval-runs", "0"]
    code, straight = _run(jpeg_data, tmp_path / "a", *flags, "--iterations", "2")
    assert code == 0
    code, part = _run(jpeg_data, tmp_path / "b", *flags, "--iterations", "1")
    assert code == 0
    assert distill_main(["--resume", str(part), "--iterations", "2", "--no-progress"]) == 0
    a = torch.load(straight / "distilled.pt", weights_only=True)["images"]
    b = torch.load(part / "distilled.pt", weights_only=True)["images"]
    assert torch.equal(a, b)


@pytest.mark.integration
def test_memory_mapped_training_images_give_the_same_run(jpeg_data, tmp_path):
    flags = ["--dataset", "tinyimagenet", "--eval-runs", "0", "--net-arch", "convnet"]
    code, on = _run(jpeg_data, tmp_path / "on", *flags, "--real-on-device", "on")
    assert code == 0
    code, off = _run(jpeg_data, tmp_path / "off", *flags, "--real-on-device", "off")
    assert code == 0
    assert torch.equal(torch.load(on / "distilled.pt", weights_only=True)["images"],
                       torch.load(off / "distilled.pt", weights_only=True)["images"])


@pytest.mark.integration
@pytest.mark.slow
def test_resnet_ap10_with_early_training(jpeg_data, tmp_path):
    """IDC's ImageNet network (the default there) with --early, on 3 classes at 32 px: minutes on 2 cores."""
    code, out = _run(jpeg_data, tmp_path, *_three_classes(tmp_path), "--size", "32", "--early", "1",
                     "--eval-epochs", "1")
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    config = torch.load(out / "distilled.pt", weights_only=True)["config"]
    assert config["net_arch"] == "resnet_ap10" and config["early"] == 1 and summary["eval"]["arch"] == "resnet_ap10"
    from udd_fast.evaluate import main as evaluate_main  # IDC's other ImageNet evaluation network
    assert evaluate_main([str(out), "--arch", "resnet18_bn", "--eval-runs", "1", "--eval-epochs", "1",
                          "--no-progress"]) == 0
    assert json.loads((out / "eval_resnet18_bn.json").read_text())["arch"] == "resnet18_bn"
    assert evaluate_main([str(out), "--eval-runs", "1", "--eval-epochs", "1", "--no-progress"]) == 0  # its own network
    assert json.loads((out / "eval_resnet_ap10.json").read_text())["arch"] == "resnet_ap10"


@pytest.mark.parametrize("flags,message", [
    (["--dataset", "mnist", "--size", "64"], "--size applies to the JPEG sets"),
    (["--dataset", "imagenet"], "needs --classes FILE"),
    (["--dataset", "tinyimagenet", "--data-dir", "{empty}"], "Tiny-ImageNet: .*wnids.txt not found"),
    (["--dataset", "tinyimagenet", "--method", "udd", "--factor", "3", "--decode-type", "multi"],
     "--decode-type multi decodes formations of several tile sizes"),
    (["--dataset", "tinyimagenet", "--net-arch", "resnet_ap10", "--trajectory-batch", "2"],
     "--trajectory-batch 2 trains ConvNets ahead"),
])
def test_bad_flags_exit_2_naming_the_problem(jpeg_data, tmp_path, capsys, flags, message):
    flags = [f.replace("{empty}", str(tmp_path)) for f in flags]
    if "--data-dir" not in flags:
        flags += ["--data-dir", str(jpeg_data)]
    out = tmp_path / "run"
    assert distill_main([*SMOKE, "--out", str(out), *flags]) == 2
    import re
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.integration
def test_the_api_takes_a_side_and_a_class_list(jpeg_data, tmp_path):
    import numpy as np
    from udd_fast import distill_dataset
    from udd_fast.config import UsageError
    res = distill_dataset("tinyimagenet", size=32, data_dir=jpeg_data, preset="smoke", iterations=1, inner_loop=1,
                          batch_real=4, n_data=8, eval_runs=0, progress=False)
    assert res.images.shape == (3, 3, 32, 32) and res.info.name == "tinyimagenet@32"
    with pytest.raises(UsageError, match="size and classes go with a JPEG set's name"):
        distill_dataset(np.zeros((20, 8, 8), np.uint8), np.arange(20) % 2, size=32)
