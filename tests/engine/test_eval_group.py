"""The runs of an evaluation trained together as one grouped model (protocol.train_grouped) against the same
runs trained one by one (protocol.train_once): each with its own keyed init, batch order, augmentation and
CutMix, in float64, every run's final parameters within 1e-10 and the same test accuracies."""
import dataclasses

import numpy as np
import pytest
import torch

from udd_fast import rng
from udd_fast.config import build_config
from udd_fast.data import ArrayDataset, RealData
from udd_fast.protocol import grouped_runs, train_and_test, train_grouped, train_once
from udd_fast.train import cutmix_box, normalize


@pytest.fixture
def small(mnist_arrays):
    """30 real MNIST training images (3 per class) as float64 in [0, 1], and real MNIST's first 300 test images."""
    ds = mnist_arrays
    idx = np.concatenate([np.flatnonzero(ds.train_labels == c)[:3] for c in range(10)])
    data = RealData(ArrayDataset(ds.info, ds.train_images[idx], ds.train_labels[idx], ds.test_images[:300],
                                 ds.test_labels[:300]), "cpu")
    x = torch.from_numpy(ds.train_images[idx]).double() / 255.0
    return x, torch.from_numpy(ds.train_labels[idx]).long(), data


def _ev(**over):
    ev = build_config("mnist", 3, "smoke", 28, 28).eval
    values = dict(eval_arch="convnet", eval_epochs=4, eval_runs=3, eval_batch=8, eval_validations=2, eval_cutmix=True,
                  eval_aug="color_crop_scale_rotate", eval_test_limit=300)
    values.update(over)
    return dataclasses.replace(ev, **values)


def test_grouped_runs_equal_separate_runs(small):
    x, y, data = small
    ev = _ev()
    xn = normalize(x, data.mean.double(), data.std.double())
    keys = [rng.key(5, "eval", "convnet", r) for r in range(ev.eval_runs)]
    apart, together = [], []
    accs = [train_once(xn, y, data, ev, k, final=apart) for k in keys]
    assert train_grouped(xn, y, data, ev, keys, final=together) == accs
    for k, (a, b) in enumerate(zip(apart, together, strict=True)):
        for p, q in zip(a, b, strict=True):
            assert p.dtype == torch.float64 and p.shape == q.shape
            assert float((p - q).abs().max()) <= 1e-10, f"run {k}"
    # the runs differ from each other (own init, batches, draws), and the training met both CutMix decisions and
    # ragged batches (30 images in batches of 8: the last of each epoch holds 6)
    assert not torch.equal(together[0][0], together[1][0])
    mixes = {cutmix_box(rng.key(rng.key(k, "step", b), "cutmix"), 28, 28) is not None for k in keys for b in range(16)}
    assert mixes == {True, False}


def test_the_protocol_groups_where_it_applies(small):
    x, y, data = small
    assert grouped_runs(_ev(eval_group="on"), "cpu") and grouped_runs(_ev(), "cuda")
    assert not grouped_runs(_ev(), "cpu") and not grouped_runs(_ev(eval_group="off"), "cuda")  # measured slower
    assert not grouped_runs(_ev(eval_runs=1), "cpu") and not grouped_runs(_ev(eval_arch="convnet_bn"), "cpu")
    on = train_and_test(x.float(), y, data, _ev(eval_epochs=2, eval_group="on"), seed=1, progress=False)
    off = train_and_test(x.float(), y, data, _ev(eval_epochs=2, eval_group="off"), seed=1, progress=False)
    assert on["grouped"] and not off["grouped"]
    # float32: the same accuracies up to round-off in the logits (a test image's argmax could flip in principle)
    assert np.allclose(on["accuracy_runs"], off["accuracy_runs"], atol=1.0)
