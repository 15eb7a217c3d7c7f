"""Herding and k-center selections (udd_fast/coreset.py): by hand on points whose answer is known, herding
against IDC's own herding_select (coreset.py) where UDD_FAST_IDC_SRC is set, and `--method herding|kcenter`
end to end on real MNIST images."""
import ast
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from udd_fast import coreset
from udd_fast.distill import main as distill_main


def test_herding_by_hand():
    # 1-D points 0, 1, 2, 10 (mean 3.25): step 0 takes the point nearest 3.25 (2); step 1 the one nearest
    # 2 * 3.25 - 2 = 4.5 among the rest (1 is 3.5 away, 10 is 5.5: 1); step 2 nearest 9.75 - 3 = 6.75 (10)
    f = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    assert coreset.herding(f, 3) == [2, 1, 3]
    assert coreset.herding(f, 4) == [2, 1, 3, 0]  # every point once


def test_kcenter_by_hand():
    # the point nearest the mean (3.25: 2), then the farthest from it (10), then the farthest from {2, 10} (0)
    f = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    assert coreset.kcenter(f, 3) == [2, 3, 0]
    square = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    assert coreset.kcenter(square, 2) == [4, 0]  # the centre first, then the first of four equally far corners


def _idc_herding_select(src):
    """IDC's herding_select, compiled alone from its coreset.py (which imports its training code)."""
    from idc_code import idc_source
    tree = ast.parse(idc_source(Path(src), "coreset.py"))
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "herding_select"]
    ns = {"torch": torch}
    exec(compile(ast.Module(body=body, type_ignores=[]), "coreset.py", "exec"), ns)
    return ns["herding_select"]


@pytest.mark.idc
def test_herding_equals_idcs():
    from idc_code import require_idc_src
    herding_select = _idc_herding_select(require_idc_src())
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(120, 16, generator=gen, dtype=torch.float64)
    targets = torch.arange(120) % 4
    theirs = herding_select(types.SimpleNamespace(nclass=4, ipc=7), features, targets)
    for c in range(4):
        idx = torch.nonzero(targets == c)[:, 0]
        assert torch.equal(idx[torch.tensor(coreset.herding(features[idx], 7))], theirs[c])


@pytest.mark.integration
@pytest.mark.parametrize("method", ["herding", "kcenter"])
def test_selection_runs_end_to_end(method, mnist_arrays, tmp_path):
    """20 real MNIST images per class as an .npz (its own test split held out): the set holds real training
    images, 2 per class, those the method picks by the proxy network's features."""
    ds = mnist_arrays
    idx = np.concatenate([np.flatnonzero(ds.train_labels == c)[:20] for c in range(10)])
    np.savez(tmp_path / "small.npz", images=ds.train_images[idx], labels=ds.train_labels[idx])
    out = tmp_path / "run"
    argv = ["--dataset", str(tmp_path / "small.npz"), "--method", method, "--ipc", "2", "--preset", "smoke",
            "--out", str(out), "--no-progress", "--proxy-cache", str(tmp_path / "proxy"), "--proxy-epochs", "1",
            "--eval-runs", "1"]
    assert distill_main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["proxy"]["source"] == "trained" and summary["factor"] == 1
    saved = torch.load(out / "distilled.pt", weights_only=True)
    x = saved["images"]
    assert x.shape == (20, 1, 28, 28) and torch.equal(saved["labels"], torch.arange(10).repeat_interleave(2))
    pool = torch.from_numpy(ds.train_images[idx]).float() / 255.0
    for img, c in zip(x, saved["labels"]):
        same = (pool == img).flatten(1).all(1)  # a real training image of its own class, unchanged
        assert same.any() and set(torch.from_numpy(ds.train_labels[idx])[same].tolist()) == {int(c)}
    other = [a if a != str(out) else str(tmp_path / "other") for a in argv]
    assert distill_main([*other, "--policy", "jitter"]) == 2 and not (tmp_path / "other").exists()  # UDD's only
