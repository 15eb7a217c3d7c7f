"""grid.png, curves.png and report.html on real images: every image where the layout says, upscaled
pixel for pixel; UDD's boxes drawn; the curves' panels; the report opened in a real headless browser
(Debian's chromium) that must render a non-blank page without console errors."""
import numpy as np
import pytest
import torch

from helpers import check_grid, png_pixels, render
from udd_fast import pictures
from udd_fast.decode import RegionViews
from udd_fast.report import report_html


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_grid_draws_every_image_and_formation_upscaled(name, mnist_arrays, request):
    if name == "mnist":
        ds = mnist_arrays
    else:
        from helpers import require_dataset
        from udd_fast.data import load_dataset

        data_dir = request.getfixturevalue("real_data_dir")
        require_dataset(data_dir, "cifar-10-batches-py")
        ds = load_dataset("cifar10", data_dir, download=False)
    ipc = 2
    idx = np.concatenate([np.flatnonzero(ds.train_labels == c)[:ipc] for c in range(ds.info.num_classes)])
    images = torch.from_numpy(ds.train_images[idx]).float() / 255
    labels = torch.from_numpy(ds.train_labels[idx])
    for factor in (1, 2):
        png = png_pixels(pictures.grid_png(images, labels, factor, ds.info.class_names))
        assert check_grid(png, images, factor, ds.info.class_names) == (ds.info.num_classes, ipc)


def test_grid_draws_udd_boxes_and_says_what_it_leaves_out(mnist_arrays):
    ds, k, ipc = mnist_arrays, 30, 7  # more classes and stored images than are drawn
    x = torch.from_numpy(ds.train_images[:k * ipc]).float() / 255
    names = [f"class {i}" for i in range(k)]
    views = RegionViews(torch.tensor([0, 0, 3, 8]), torch.tensor([[0, 0, 7, 7], [14, 2, 21, 9], [4, 4, 14, 14],
                                                          [7, 0, 14, 7]]))
    png = png_pixels(pictures.grid_png(x, torch.arange(k).repeat_interleave(ipc), 2, names, region_views=views))
    rows, per = check_grid(png, x, 2, names, views)
    assert (rows, per) == (pictures.MAX_CLASSES, pictures.MAX_STORED)
    note = png[-pictures.TITLE_H:]
    assert (note.min(axis=2) < 200).sum() > 20, "the caption saying what is not drawn is missing"
    plain = png_pixels(pictures.grid_png(x, torch.arange(k).repeat_interleave(ipc), 2, names))
    assert not np.array_equal(plain, png)  # control: the boxes are what differs
    assert not (plain == pictures.BOX_COLOR).all(axis=2).any()


def test_curves_have_a_panel_per_series():
    loss = [[i, 100.0 / i] for i in range(1, 11)]
    one = png_pixels(pictures.curves_png({"loss": loss}))
    three = png_pixels(pictures.curves_png({"loss": loss, "mue": [[i, 0.8 + i * 1e-5] for i in range(11)],
                                      "accuracy": [[5, 20.0], [10, 25.0]]}))
    empty = png_pixels(pictures.curves_png({}))
    assert one.shape[1] == three.shape[1] and three.shape[0] > 2.5 * one.shape[0]
    assert empty.shape == one.shape
    for img in (one, three):  # a line is drawn: pixels of matplotlib's first colour (#1f77b4)
        blue = (np.abs(img.astype(int) - [31, 119, 180]).sum(axis=2) < 40).sum()
        assert blue > 100
    assert (np.abs(empty.astype(int) - [31, 119, 180]).sum(axis=2) < 40).sum() == 0


# -- report.html in a real browser ---------------------------------------------------------------------

def _drawn(shot) -> float:
    return float((shot.min(axis=2) < 200).mean())


def _black(shot) -> float:
    """The share of near-black pixels: MNIST's background, so the embedded grid was decoded and drawn."""
    return float((shot.max(axis=2) < 30).mean())


@pytest.mark.integration
@pytest.mark.browser
def test_report_renders_in_a_headless_browser(tmp_path, mnist_arrays):
    ds = mnist_arrays
    x = torch.from_numpy(ds.train_images[:20]).float() / 255
    grid = pictures.grid_png(x, torch.arange(10).repeat_interleave(2), 2, ds.info.class_names)
    curves = pictures.curves_png({"loss": [[1, 5.0], [2, 4.0]], "accuracy": [[2, 31.5]]})
    summary = {"method": "udd", "dataset": "mnist", "ipc": 2, "preset": "smoke", "accuracy_runs": [31.0, 32.0],
               "best_runs": [31.5, 32.5], "accuracy_mean": 31.5, "accuracy_std": 0.71, "best_mean": 32.0,
               "distill_seconds": 12.0, "eval_seconds": 3.0, "mue_initial": 0.81, "mue_final": 0.8,
               "policy_share": {"response": 0.5, "jitter": 0.5}, "version": "t", "torch": torch.__version__,
               "device": "cpu", "date": "2026-12-03"}
    page = tmp_path / "report.html"
    page.write_text(report_html(summary, {"ipc": 2, "method": "udd"}, {"grid": grid, "curves": curves}))
    assert "<script" not in page.read_text() and "http" not in page.read_text().split("</style>")[1]
    shot, console = render(page, tmp_path)
    assert console == []
    assert _drawn(shot) > 0.02 and _black(shot) > 0.05, (_drawn(shot), _black(shot))
    # positive controls: the checks above can fail
    broken = tmp_path / "broken.html"
    broken.write_text(report_html(summary, {"ipc": 2}, {"grid": b"not a png", "curves": b"nor this"}))
    assert _black(render(broken, tmp_path)[0]) < 0.01
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert _drawn(render(blank, tmp_path)[0]) < 0.001
    planted = tmp_path / "planted.html"
    planted.write_text("<!DOCTYPE html><html><body><p>x</p><script>console.error('planted')</script></body></html>")
    assert any("planted" in line for line in render(planted, tmp_path)[1])
