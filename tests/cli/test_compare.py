"""DD-Ranking's scores (udd_fast/scores.py) by hand, and `python -m udd_fast.compare` on real runs: an IDC set, its
random selection, the full-data reference and another tool's set evaluated with --out, all distilled from real
MNIST images; the page's numbers are the runs' own, the scores are computed from them, the page renders in a
headless browser, and bad input is refused before anything is written."""
import json
import math

import numpy as np
import pytest
import torch

from helpers import png_pixels, render
from udd_fast import scores
from udd_fast.compare import main as compare_main
from udd_fast.distill import main as distill_main
from udd_fast.evaluate import main as evaluate_main


def test_label_robust_score_by_hand():
    # full 80 %, set 50 %, random 30 %: HLR 0.30, IOR 0.20, alpha = 0.5 * 0.2 - 0.5 * 0.3 = -0.05;
    # (e^-0.05 - e^-1) / (e - e^-1) = (0.951229424 - 0.367879441) / (2.718281828 - 0.367879441) = 0.248191538
    assert scores.lrs(80.0, 50.0, 30.0) == pytest.approx(0.248191538, abs=1e-9)
    assert scores.lrs(0.0, 100.0, 0.0) == pytest.approx(1.0)  # alpha = 1: the top of [0, 1]
    assert scores.lrs(100.0, 0.0, 100.0) == pytest.approx(0.0, abs=1e-15)  # alpha = -1: the bottom
    # w = 1: IOR alone (0.2): (e^0.2 - e^-1) / (e - e^-1)
    assert scores.lrs(80.0, 50.0, 30.0, weight=1.0) == pytest.approx((1.221402758 - 0.367879441) / 2.350402387)


def test_scores_pair_the_runs_the_lists_share():
    s = scores.scores([50.0, 52.0], [30.0, 31.0, 99.0], [80.0, 80.0])
    assert s["paired_runs"] == 2
    assert s["ior"]["runs"] == [20.0, 21.0] and s["ior"]["mean"] == 20.5
    assert s["hlr"]["runs"] == [30.0, 28.0] and s["hlr"]["std"] == pytest.approx(math.sqrt(2.0))
    assert s["recovered"]["runs"] == [62.5, 65.0]
    assert s["lrs"]["runs"][0] == pytest.approx(24.8191538, abs=1e-6)
    only_random = scores.scores([50.0], [30.0])
    assert set(only_random) == {"paired_runs", "weight", "labels", "ior"}
    # soft labels: IOR from the soft accuracies (set 60, random 45: 15 points), HLR from the hard ones (30)
    soft = scores.scores([50.0], [30.0], [80.0], soft=([60.0], [45.0]))
    assert soft["labels"] == "soft" and soft["ior"]["runs"] == [15.0] and soft["hlr"]["runs"] == [30.0]
    # alpha = 0.5 * 0.15 - 0.5 * 0.30 = -0.075: (e^-0.075 - e^-1) / (e - e^-1)
    assert soft["lrs"]["runs"][0] == pytest.approx(100 * (0.927743486 - 0.367879441) / 2.350402387, abs=1e-6)


@pytest.fixture(scope="module")
def compared_runs(mnist_arrays, tmp_path_factory):
    """An IDC set, its random selection at IPC 1, the full-data reference (2 runs each, smoke), and the IDC set's
    images saved as an .npz and evaluated as another tool's set with --out, on 200 real MNIST training images."""
    tmp = tmp_path_factory.mktemp("compare")
    ds = mnist_arrays
    idx = np.concatenate([np.flatnonzero(ds.train_labels == c)[:20] for c in range(10)])
    np.savez(tmp / "small.npz", images=ds.train_images[idx], labels=ds.train_labels[idx],
             test_images=ds.test_images[:300], test_labels=ds.test_labels[:300])
    common = ["--dataset", str(tmp / "small.npz"), "--preset", "smoke", "--no-progress", "--eval-runs", "2"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UDD_FAST_CACHE", str(tmp / "cache"))
        for method in ("idc", "random", "full"):
            extra = ["--eval-epochs", "2"] if method != "full" else []
            assert distill_main([*common, *extra, "--method", method, "--out", str(tmp / method)]) == 0
        for method in ("idc", "random"):  # with a teacher's soft labels too (one teacher, cached)
            assert evaluate_main([str(tmp / method), "--soft-labels", "--teacher-epochs", "1", "--eval-runs", "2",
                                  "--no-progress"]) == 0
    saved = torch.load(tmp / "idc" / "distilled.pt", weights_only=True)
    np.savez(tmp / "theirs.npz", images=(saved["images"].numpy() * 255).round().astype(np.uint8),
             labels=saved["labels"].numpy())
    assert evaluate_main([str(tmp / "theirs.npz"), "--dataset", str(tmp / "small.npz"), "--eval-runs", "2",
                          "--eval-epochs", "2", "--no-progress", "--out", str(tmp / "theirs")]) == 0
    return tmp


def _summary(d):
    return json.loads((d / "summary.json").read_text())


@pytest.mark.integration
def test_compare_page_and_scores_from_real_runs(compared_runs, tmp_path, capsys):
    runs = compared_runs
    dirs = [str(runs / n) for n in ("idc", "random", "full", "theirs")]
    assert compare_main([*dirs, "--out", str(tmp_path / "cmp")]) == 0
    page = (tmp_path / "cmp" / "compare.html").read_text()
    idc, rnd, full = (_summary(runs / n) for n in ("idc", "random", "full"))
    theirs = json.loads((runs / "theirs" / "eval_convnet.json").read_text())
    for s in (idc, rnd, full, theirs):  # every set's own mean +- std is on the page
        assert f"{s['accuracy_mean']:.2f} &plusmn; {s['accuracy_std']:.2f}" in page
    want = scores.scores(idc["accuracy_runs"], rnd["accuracy_runs"], full["accuracy_runs"])
    assert f"{want['lrs']['mean']:.2f} &plusmn; {want['lrs']['std']:.2f}" in page
    assert f"{want['ior']['mean']:.2f} &plusmn; {want['ior']['std']:.2f}" in page
    assert f"{want['recovered']['mean']:.2f} &plusmn; {want['recovered']['std']:.2f}" in page
    # the other tool's set is scored against the same references (its IPC is 1: 10 images of 10 classes)
    other = scores.scores(theirs["accuracy_runs"], rnd["accuracy_runs"], full["accuracy_runs"])
    assert f"{other['lrs']['mean']:.2f} &plusmn; {other['lrs']['std']:.2f}" in page
    assert theirs["method"] == "npz" and theirs["ipc"] == 1
    png = png_pixels((tmp_path / "cmp" / "compare.png").read_bytes())
    assert png.shape[0] > 200 and (png.min(axis=2) < 200).mean() > 0.01
    assert "<script" not in page and "http" not in page.split("</style>")[1]
    err = capsys.readouterr().err
    assert f"lrs {want['lrs']['mean']:.2f}" in err
    # soft labels: IOR from the soft accuracies, HLR from the hard ones
    soft_idc, soft_rnd = (json.loads((runs / n / "eval_convnet_soft.json").read_text()) for n in ("idc", "random"))
    assert soft_idc["labels"] == "soft" and soft_idc["teacher"]["epochs"] == 1
    # one teacher, the full-data reference's first network (kept by --method full, read back for both)
    assert soft_idc["teacher"]["source"] == soft_rnd["teacher"]["source"] == "cached"
    assert soft_idc["teacher"]["test_accuracy"] == full["accuracy_runs"][0]
    with_soft = scores.scores(idc["accuracy_runs"], None, full["accuracy_runs"],
                              soft=(soft_idc["accuracy_runs"], soft_rnd["accuracy_runs"]))
    assert f"{with_soft['lrs']['mean']:.2f} &plusmn; {with_soft['lrs']['std']:.2f}" in page
    assert f"lrs {with_soft['lrs']['mean']:.2f}" in err and "(convnet, soft labels)" in err


@pytest.mark.integration
@pytest.mark.browser
def test_compare_page_renders_in_a_headless_browser(compared_runs, tmp_path):
    runs = compared_runs
    assert compare_main([str(runs / n) for n in ("idc", "random", "full")] + ["--out", str(tmp_path)]) == 0
    shot, console = render(tmp_path / "compare.html", tmp_path)
    assert console == []
    drawn = (shot.min(axis=2) < 200).mean()
    coloured = (np.abs(shot.astype(int) - [31, 119, 180]).sum(axis=2) < 40).mean()  # the chart's first bars
    assert drawn > 0.02 and coloured > 0.001, (drawn, coloured)


@pytest.mark.integration
def test_bad_input_is_refused_before_anything_is_written(compared_runs, tmp_path, capsys):
    runs = compared_runs
    out = tmp_path / "cmp"

    def refused(*argv, says):
        assert compare_main([*argv, "--out", str(out)]) == 2
        assert says in capsys.readouterr().err
        assert not out.exists()

    refused(str(runs / "idc"), str(tmp_path / "nothing"), says="nothing: not a directory")
    refused(str(runs / "idc"), str(runs / "idc"), says="given twice")
    (tmp_path / "empty").mkdir()
    refused(str(tmp_path / "empty"), says="holds no evaluation")
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / "INCOMPLETE").write_text("")
    refused(str(tmp_path / "stopped"), says="marked incomplete")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text(json.dumps({**_summary(runs / "idc"), "accuracy_runs": [101.0],
                                                               "architectures": None}))
    refused(str(tmp_path / "bad"), says="not a list of accuracies in [0, 100]")
    (tmp_path / "bad" / "summary.json").write_text("[1, 2]")
    refused(str(tmp_path / "bad"), says="not an object")
    refused(str(runs / "idc"), "--lrs-weight", "2", says="--lrs-weight 2.0: must lie in [0, 1]")
    # an earlier comparison is kept unless --force
    assert compare_main([str(runs / "idc"), "--out", str(out)]) == 0
    before = (out / "compare.html").read_bytes()
    assert compare_main([str(runs / "idc"), str(runs / "random"), "--out", str(out)]) == 2
    assert "already holds compare.html, compare.png" in capsys.readouterr().err
    assert (out / "compare.html").read_bytes() == before
    assert compare_main([str(runs / "idc"), str(runs / "random"), "--out", str(out), "--force"]) == 0
    assert (out / "compare.html").read_bytes() != before


@pytest.mark.integration
def test_soft_label_flags_are_checked_before_any_training(compared_runs, capsys):
    d = compared_runs / "idc"
    before = sorted(p.name for p in d.iterdir())
    for argv, says in ((["--soft-labels", "--temperature", "0"], "--temperature must be a finite number > 0"),
                       (["--teacher-epochs", "2"], "--teacher-epochs and --temperature are for --soft-labels"),
                       (["--soft-labels", "--teacher-epochs", "0"], "--teacher-epochs must be >= 1")):
        assert evaluate_main([str(d), *argv, "--no-progress"]) == 2
        assert says in capsys.readouterr().err
    assert sorted(p.name for p in d.iterdir()) == before
