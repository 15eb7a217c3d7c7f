"""The Python API on real data: distill_dataset returns a Result (set, decoded training set, boxes,
summary with the run's curves), Result.save writes the artifacts a run writes, evaluate_distilled
gives the same numbers for a Result and for its saved directory; images in memory; bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import udd_fast
from udd_fast.api import UsageError
from udd_fast.artifacts import ArtifactError
from udd_fast.data import DataError

SMOKE = dict(preset="smoke", progress=False, download=False)


@pytest.fixture(scope="module")
def udd_result(real_data_dir):
    """One UDD smoke run on MNIST with a short evaluation after every outer iteration."""
    return udd_fast.distill_dataset("mnist", method="udd", eval_every=1, eval_runs=1, eval_epochs=2,
                                    data_dir=real_data_dir, **SMOKE)


@pytest.mark.integration
def test_result_holds_the_set_its_training_set_and_the_run(udd_result):
    r = udd_result
    k, n = 10, 10  # IPC 1
    assert r.images.shape == (n, 1, 28, 28) and r.images.dtype == torch.float32
    assert torch.equal(r.labels, torch.arange(k)) and r.factor == 2 and r.class_names[3] == "3"
    src, boxes = r.region_views
    assert boxes.shape == (n * 4, 4) and src.shape == (n * 4,)
    x, y = r.training_set()
    assert x.shape == (n * 4 + n * 4, 1, 28, 28) and torch.equal(y[:n * 4], r.labels.repeat(4))
    assert r.training_set(with_region_views=False)[0].shape[0] == n * 4
    assert r.summary["num_train"] == x.shape[0] and r.summary["accuracy_runs"] and r.summary["method"] == "udd"
    h = r.history
    assert [p[0] for p in h["loss"]] == [1, 2] and [p[0] for p in h["accuracy"]] == [1, 2]
    assert [p[0] for p in h["mue"]] == [0, 1, 2] and h["mue"][0][1] == r.summary["mue_initial"]
    assert h["loss"][-1][1] == r.summary["final_matching_loss"]
    assert all(0 <= a <= 100 for _, a in h["accuracy"]) and r.summary["eval_every_seconds"] > 0


@pytest.mark.integration
def test_save_writes_a_run_directory_and_load_reads_it_back(udd_result, tmp_path):
    out = udd_result.save(tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "distilled.pt", "grid.png", "report.html",
                                                      "summary.json"]
    assert json.loads((out / "summary.json").read_text())["history"] == udd_result.history
    assert Image.open(out / "curves.png").size[1] > 500  # three panels: loss, mUE, accuracy
    back = udd_fast.Result.load(out)
    assert torch.equal(back.images, udd_result.images) and back.factor == 2
    assert all(torch.equal(a, b) for a, b in zip(back.region_views, udd_result.region_views))
    assert back.summary == json.loads((out / "summary.json").read_text())
    with pytest.raises(ArtifactError, match="holds another run"):
        udd_result.save(out)
    udd_result.save(out, force=True)


@pytest.mark.integration
def test_evaluate_a_result_and_its_saved_directory_alike(udd_result, real_data_dir, tmp_path):
    out = udd_result.save(tmp_path / "saved")
    kw = dict(runs=1, epochs=1, progress=False, data_dir=real_data_dir, download=False)
    a = udd_fast.evaluate_distilled(udd_result, **kw)
    b = udd_fast.evaluate_distilled(out, **kw)
    assert a["accuracy_runs"] == b["accuracy_runs"] and a["num_train"] == 80 and a["region_views"]
    c = udd_fast.evaluate_distilled(out, with_region_views=False, **kw)
    assert c["num_train"] == 40 and not c["region_views"]


@pytest.mark.integration
def test_images_in_memory(real_data_dir):
    from helpers import require_dataset
    from udd_fast.data import load_dataset

    require_dataset(real_data_dir, "cifar-10-batches-py")
    ds = load_dataset("cifar10", real_data_dir, download=False)
    idx = np.concatenate([np.flatnonzero(ds.train_labels == c)[:30] for c in range(10)])
    images = torch.from_numpy(ds.train_images[idx]).permute(0, 2, 3, 1)  # NHWC uint8, as many tools keep them
    r = udd_fast.distill_dataset(images, ds.train_labels[idx], class_names=ds.info.class_names, method="random",
                                 ipc=2, eval_runs=1, eval_epochs=1, **SMOKE)
    assert r.images.shape == (20, 3, 32, 32) and r.info.name == "arrays" and r.class_names == ds.info.class_names
    # the stored images are real training images, pixel for pixel
    stored = (r.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    for img in stored:
        assert (images == img).flatten(1).all(1).any()
    with pytest.raises(UsageError, match="images in memory"):
        udd_fast.evaluate_distilled(r, runs=1, epochs=1, progress=False)
    from udd_fast.data import from_arrays

    test = from_arrays(images, ds.train_labels[idx], class_names=ds.info.class_names)
    assert udd_fast.evaluate_distilled(r, data=test, runs=1, epochs=1, progress=False)["num_train"] == 20


def test_bad_input_is_refused_before_any_work(real_data_dir, tmp_path):
    with pytest.raises(TypeError, match="unknown setting 'ipcs'"):
        udd_fast.distill_dataset("mnist", ipcs=2)
    with pytest.raises(UsageError, match="policy= is a UDD setting: it needs method='udd'"):
        udd_fast.distill_dataset("mnist", policy="jitter")
    with pytest.raises(UsageError, match="method='full' stores no set"):
        udd_fast.distill_dataset("mnist", method="full")
    with pytest.raises(UsageError, match=r"ipc= must be >= 1"):
        udd_fast.distill_dataset("mnist", ipc=0)
    with pytest.raises(UsageError, match="need their labels"):
        udd_fast.distill_dataset(np.zeros((20, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"arrays\['images'\]: float images must lie in \[0, 1\]"):
        udd_fast.distill_dataset(np.full((20, 28, 28), 2.0), np.arange(20) % 2, **SMOKE)
    with pytest.raises(DataError, match="unknown dataset .imagenet-1k."):
        udd_fast.distill_dataset("imagenet-1k")
    with pytest.raises(ArtifactError, match="does not exist"):
        udd_fast.evaluate_distilled(tmp_path / "nothing")
    assert list(tmp_path.iterdir()) == []
