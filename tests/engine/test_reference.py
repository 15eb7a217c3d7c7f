"""The full-data reference (udd_fast/reference.py, `--method full`): IDC's protocol trained on every real training
image, read through protocol.RealImages, equal to the same protocol on the set materialized; cached under its
key, a corrupt or mismatched cache retrained; end to end as a run directory without a set. Real MNIST images."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from udd_fast.config import EvalConfig
from udd_fast.data import RealData, from_arrays
from udd_fast.distill import main as distill_main
from udd_fast.evaluate import main as evaluate_main
from udd_fast.protocol import train_and_test
from udd_fast.reference import full_data_accuracy


def _small(ds, per_class=6, test=100):
    idx = np.concatenate([np.flatnonzero(ds.train_labels == c)[:per_class] for c in range(10)])
    return ds.train_images[idx], ds.train_labels[idx], ds.test_images[:test], ds.test_labels[:test]


EV = EvalConfig(eval_runs=2, eval_epochs=2, eval_validations=1, eval_aug="color_crop_scale_rotate", eval_cutmix=True)


def test_full_data_accuracy_equals_the_protocol_on_the_materialized_set_and_is_cached(mnist_arrays, tmp_path):
    x, y, tx, ty = _small(mnist_arrays)
    data = RealData(from_arrays(x, y, tx, ty, name="mnist60"), "cpu")
    res = full_data_accuracy(data, EV, seed=3, cache_dir=tmp_path)
    assert res["source"] == "trained" and res["num_train"] == 60 and len(res["accuracy_runs"]) == 2
    # the same keyed runs on the training set held whole in float: the same accuracies
    whole = train_and_test(data.to_float(torch.arange(60)), data.labels, data, EV, seed=3, progress=False)
    assert whole["accuracy_runs"] == res["accuracy_runs"] and whole["best_runs"] == res["best_runs"]
    again = full_data_accuracy(data, EV, seed=3, cache_dir=tmp_path)
    assert again["source"] == "cached" and again["accuracy_runs"] == res["accuracy_runs"]
    assert again["trained_seconds"] == res["eval_seconds"] and again["cache"] == res["cache"]
    # another number of epochs is another reference: trained, in its own file
    other = full_data_accuracy(data, dataclasses.replace(EV, eval_epochs=1), seed=3, cache_dir=tmp_path)
    assert other["source"] == "trained" and other["cache"] != res["cache"]
    assert len(list(tmp_path.glob("full-*.json"))) == 2 and len(list(tmp_path.glob("teacher-*.pt"))) == 2


@pytest.mark.parametrize("damage", ["not json", "key", "runs"])
def test_an_unusable_cache_is_retrained_never_used(mnist_arrays, tmp_path, damage):
    x, y, tx, ty = _small(mnist_arrays, per_class=3, test=50)
    data = RealData(from_arrays(x, y, tx, ty, name="mnist30"), "cpu")
    ev = dataclasses.replace(EV, eval_epochs=1, eval_runs=1)
    res = full_data_accuracy(data, ev, seed=0, cache_dir=tmp_path, progress=False)
    path = Path(res["cache"])
    saved = json.loads(path.read_text())
    if damage == "not json":
        path.write_text("{")
    elif damage == "key":
        saved["key"]["seed"] = 1
        path.write_text(json.dumps(saved))
    else:  # accuracies that are not ones
        saved["result"]["accuracy_runs"] = [150.0]
        path.write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="unusable"):
        again = full_data_accuracy(data, ev, seed=0, cache_dir=tmp_path, progress=False)
    assert again["source"] == "trained" and again["accuracy_runs"] == res["accuracy_runs"]
    assert json.loads(path.read_text())["result"]["accuracy_runs"] == res["accuracy_runs"]  # rewritten whole


@pytest.mark.integration
def test_method_full_end_to_end(mnist_arrays, tmp_path, monkeypatch):
    """`distill --method full` writes a run directory without a set (summary.json, report.html); a second run
    reads the cache; evaluate refuses the directory, and --ipc is refused with the method."""
    monkeypatch.setenv("UDD_FAST_CACHE", str(tmp_path / "cache"))
    x, y, tx, ty = _small(mnist_arrays, per_class=10, test=200)
    np.savez(tmp_path / "small.npz", images=x, labels=y, test_images=tx, test_labels=ty)
    argv = ["--dataset", str(tmp_path / "small.npz"), "--method", "full", "--preset", "smoke", "--no-progress",
            "--eval-runs", "2", "--eval-arch", "convnet,convnet_bn"]
    assert distill_main([*argv, "--out", str(tmp_path / "a")]) == 0
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["method"] == "full" and s["ipc"] is None and s["num_train"] == 100 and s["num_stored"] == 0
    assert s["eval"]["epochs"] == 1 and len(s["accuracy_runs"]) == 2  # the smoke preset's full-data epochs
    assert set(s["architectures"]) == {"convnet", "convnet_bn"}
    assert {r["source"] for r in s["reference"].values()} == {"trained"}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["log.txt", "report.html", "summary.json"]
    assert "the full-data reference on npz:" in (tmp_path / "a" / "report.html").read_text()
    assert distill_main([*argv, "--out", str(tmp_path / "b")]) == 0
    t = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert {r["source"] for r in t["reference"].values()} == {"cached"}
    assert t["architectures"] == {a: {**r, "eval_seconds": t["architectures"][a]["eval_seconds"]}
                                  for a, r in s["architectures"].items()}
    assert evaluate_main([str(tmp_path / "a"), "--no-progress"]) == 2
    assert distill_main([*argv, "--ipc", "3", "--out", str(tmp_path / "c")]) == 2 and not (tmp_path / "c").exists()
    assert distill_main([*argv[:-4], "--eval-runs", "0", "--out", str(tmp_path / "c")]) == 2


def test_default_run_directory_of_method_full_names_no_ipc():
    import argparse
    from udd_fast.data import DataSource
    from udd_fast.distill import _default_out

    args = argparse.Namespace(ipc=1, method="full", preset="quick", seed=0)
    assert str(_default_out(DataSource.parse("cifar10"), args)) == "runs/cifar10-full-quick-s0"
    args.method = "idc"
    assert str(_default_out(DataSource.parse("cifar10"), args)) == "runs/cifar10-ipc1-idc-quick-s0"


# -- the soft labels' teacher ----------------------------------------------------------------------------

def test_soft_label_loss_is_the_kl_divergence_at_the_temperature():
    from udd_fast.train import SoftLabels

    gen = torch.Generator().manual_seed(0)
    teacher = torch.nn.Linear(6, 5).double()
    x, out = torch.randn(7, 6, generator=gen, dtype=torch.float64), torch.randn(7, 5, generator=gen,
                                                                                  dtype=torch.float64)
    t = 1.7
    p = torch.softmax(teacher(x).detach() / t, 1)
    want = (p * (p.log() - torch.log_softmax(out / t, 1))).sum() / 7  # KL(p_teacher || p_student), batch mean
    assert torch.allclose(SoftLabels(teacher, t).loss(out, x), want, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="temperature"):
        SoftLabels(teacher, 0.0)


class _Says(torch.nn.Module):
    """A teacher that calls every image class k."""

    def __init__(self, k, classes=10):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.full((classes,), -8.0).index_fill(0, torch.tensor([k]), 8.0))

    def forward(self, x):
        return self.bias.expand(x.shape[0], -1)


def test_a_student_learns_the_teachers_labels_not_the_sets(mnist_arrays):
    """Hard labels say 0..9; the teacher says 3 of every image: the student ends calling every test image 3."""
    from udd_fast.train import SoftLabels

    x, y, tx, ty = _small(mnist_arrays, per_class=5, test=200)
    data = RealData(from_arrays(x, y, tx, ty, name="mnist50"), "cpu")
    ev = dataclasses.replace(EV, eval_runs=1, eval_epochs=20, eval_lr=0.05)
    res = train_and_test(data.to_float(torch.arange(50)), data.labels, data, ev, progress=False,
                         soft=SoftLabels(_Says(3)))
    assert res["labels"] == "soft"
    assert res["accuracy_runs"][0] == pytest.approx(100.0 * float((data.test_labels == 3).float().mean()))


def test_the_teacher_is_the_full_data_references_first_run_and_is_cached(mnist_arrays, tmp_path):
    from udd_fast.reference import teacher_network
    from udd_fast.train import accuracy

    x, y, tx, ty = _small(mnist_arrays)
    data = RealData(from_arrays(x, y, tx, ty, name="mnist60"), "cpu")
    ev = dataclasses.replace(EV, eval_runs=1)
    model, facts = teacher_network(data, ev, seed=3, cache_dir=tmp_path / "alone", progress=False)
    assert facts["source"] == "trained"
    # the full-data reference keeps its first run's network as the teacher: read, not trained again
    full = full_data_accuracy(data, EV, seed=3, cache_dir=tmp_path / "shared", progress=False)
    again, facts2 = teacher_network(data, ev, seed=3, cache_dir=tmp_path / "shared", progress=False)
    assert facts2["source"] == "cached" and facts2["test_accuracy"] == facts["test_accuracy"] == full["accuracy_runs"][0]
    assert accuracy(again, data.test_images, data.test_labels, data.mean, data.std) == facts["test_accuracy"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
