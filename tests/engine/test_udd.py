"""UDD parts (docs/method.md section 2): planted windows under a closed-form proxy, geometry, region views,
CFC, mUE, the proxy cache, batched == sequential with every part on, and `smoke` end to end."""
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from helpers import close_at_run_scale, run_scale
from helpers import check_grid
from udd_fast.config import build_config
from udd_fast.decode import decode_plan
from udd_fast.distill import main as distill_main
from udd_fast.engine import Engine
from udd_fast.models import ConvNet
from udd_fast.evaluate import main as evaluate_main
from udd_fast.proxy import load_or_train_proxy, new_proxy
from udd_fast.ops.cfc_loss import cfc_loss_ref, class_prototypes
from udd_fast.ops.crop_resize import crop_resize_ref
from udd_fast.ops.response_map import response_map_ref, usage_entropy_ref, window_scores_ref
from udd_fast.region_search import RegionSearch, window_grid, window_pixel_masks


class LinearProxy(nn.Module):
    """Features = 4x4 average pool of the input; a linear head. R and p_y are then closed-form."""

    def __init__(self, weight, bias):
        super().__init__()
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.classifier.weight.copy_(weight)
            self.classifier.bias.copy_(bias)

    def feature_map(self, x):
        return F.adaptive_avg_pool2d(x, 4)

    def forward(self, x):
        return self.classifier(self.feature_map(x).flatten(1))


ZERO, ONE = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)


def test_window_geometry_at_28_and_32_px():
    assert window_grid(16, 0.5).tolist() == [[y, x, y + 8, x + 8] for y in (0, 4, 8) for x in (0, 4, 8)]
    assert window_grid(14, 0.5).tolist() == [[y, x, y + 7, x + 7] for y in (0, 4, 7) for x in (0, 4, 7)]
    assert window_grid(32, 0.5).tolist()[4] == [8, 8, 24, 24]  # k = 1: 16-px windows at 0/8/16
    s = RegionSearch(None, 32, 2)
    assert s.tile == 16
    # region boxes in stored coordinates: tile origin + window
    _, boxes = decode_plan(1, 32, 2)
    got = s.boxes(torch.tensor([0, 4, 8, 2]), boxes[:, :2])
    assert got.tolist() == [[0, 0, 8, 8], [4, 20, 12, 28], [24, 8, 32, 16], [16, 24, 24, 32]]
    # decoded pixels of a window: source (d + 0.5) * tile / size inside the window
    m = window_pixel_masks(window_grid(14, 0.5), 14, 28)
    assert m[4].nonzero()[:, 0].unique().tolist() == list(range(8, 22))
    assert m[8].nonzero()[:, 1].unique().tolist() == list(range(14, 28))


def test_response_map_is_the_true_class_logit_split_over_cells():
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    head = torch.randn(7, 48, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 6, 3, 3, 1])
    R = response_map_ref(fmap, head, y)
    for n in range(5):
        direct = sum(head[y[n], ch * 16 + i * 4 + j] * fmap[n, ch, i, j] for ch in range(3) for i in range(4)
                     for j in range(4))
        assert R[n].sum().item() == pytest.approx(direct.item(), abs=1e-12)
        assert R[n, 2, 1].item() == pytest.approx(sum(head[y[n], ch * 16 + 9] * fmap[n, ch, 2, 1] for ch in range(3)).item())


@pytest.mark.parametrize("planted", range(9))
def test_response_policy_picks_the_planted_window(planted):
    # R = +1 everywhere but -1 on the 2x2 cells under window `planted` (tile 16 -> 4 px per cell)
    py, px = (planted // 3) * 4 // 4, (planted % 3) * 4 // 4
    cells = torch.ones(4, 4)
    cells[py:py + 2, px:px + 2] = -1.0
    x = (cells.repeat_interleave(8, 0).repeat_interleave(8, 1) + 1.0) / 2.0  # a 32-px image, pooled back to `cells`
    head = torch.zeros(2, 16)
    head[1] = 2.0  # R = 2 * F - 1 for class 1 with bias -1 spread... only the ordering matters
    proxy = LinearProxy(head, torch.tensor([0.0, 5.0]))  # predicts class 1: correct -> auto uses response
    s = RegionSearch(proxy, 32, 2, policy="auto")
    choice, used_jitter, R = s.select(x.view(1, 1, 32, 32), torch.tensor([1]), ZERO, ONE, key=1)
    assert torch.allclose(R[0], 2 * F.adaptive_avg_pool2d(x.view(1, 1, 32, 32), 4)[0, 0])
    assert choice.tolist() == [planted] and used_jitter.tolist() == [False]
    scores = window_scores_ref(R, 16, s.windows)
    assert scores[0].argmin().item() == planted


@pytest.mark.parametrize("planted", [0, 4, 7])
def test_jitter_policy_picks_the_window_the_proxy_ignores(planted):
    # the head has zero weight exactly on the feature cells fed by window `planted`'s pixels, so
    # jittering there leaves p_y unchanged (|dp| = 0) while every other window moves it
    g = torch.Generator().manual_seed(planted)
    mask = window_pixel_masks(window_grid(16, 0.5), 16, 32)[planted]
    cells = F.adaptive_avg_pool2d(mask.float().view(1, 1, 32, 32), 4)[0, 0] > 0
    head = torch.randn(3, 16, generator=g) * 3
    head[:, cells.flatten()] = 0.0
    proxy = LinearProxy(head, torch.zeros(3))
    x = torch.full((1, 1, 32, 32), 0.5)
    s = RegionSearch(proxy, 32, 2, policy="jitter", jitter_draws=4)
    choice, used_jitter, _ = s.select(x, torch.tensor([2]), ZERO, ONE, key=3)
    assert used_jitter.tolist() == [True] and choice.tolist() == [planted]


def test_ties_go_to_the_lowest_index_and_auto_splits_by_correctness():
    head = torch.zeros(2, 16)
    proxy = LinearProxy(head, torch.tensor([1.0, 0.0]))  # always predicts class 0
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1])
    s = RegionSearch(proxy, 32, 2, policy="auto")
    choice, used_jitter, _ = s.select(x, labels, ZERO, ONE, key=5)
    # R == 0 and p_y insensitive everywhere: every score ties, the lowest index wins
    assert choice.tolist() == [0, 0, 0, 0]
    assert used_jitter.tolist() == [False, True, False, True]


def test_region_view_backward_lands_exactly_inside_its_window():
    S = torch.rand(3, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    src, boxes = torch.tensor([2, 0]), torch.tensor([[4, 20, 12, 28], [24, 24, 32, 32]])
    crop_resize_ref(S, src, boxes, (32, 32)).sum().backward()
    inside = torch.zeros_like(S, dtype=torch.bool)
    inside[2, :, 4:12, 20:28] = True
    inside[0, :, 24:32, 24:32] = True
    assert bool((S.grad[inside] > 0).all())
    assert bool((S.grad[~inside] == 0).all())


def test_cfc_value_and_gradient_against_the_formula():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(6, 11, generator=g, dtype=torch.float64, requires_grad=True)
    real = torch.randn(4, 5, 11, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 3, 1, 2, 0])
    tau = 0.1
    mu = class_prototypes(real)
    loss = cfc_loss_ref(f, y, mu, tau)
    loss.backward()
    fn, mun = f.detach().numpy(), mu.numpy()
    m = real.numpy().mean(1)
    assert np.allclose(mun, m / np.linalg.norm(m, axis=1, keepdims=True))
    total, grad = 0.0, np.zeros_like(fn)
    for i in range(6):
        norm = np.linalg.norm(fn[i])
        z = fn[i] / norm
        s = mun @ z / tau
        p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        total += -np.log(p[y[i]])
        dz = (p @ mun - mun[y[i]]) / tau / 6
        grad[i] = (dz - z * (z @ dz)) / norm
    assert loss.item() == pytest.approx(total / 6, rel=1e-12)
    assert np.allclose(f.grad.numpy(), grad, atol=1e-12)


def test_mue_is_one_for_uniform_and_zero_for_one_cell():
    uniform = torch.full((1, 4, 4), 0.7)
    one = torch.zeros(1, 4, 4)
    one[0, 2, 1] = 3.0
    negative = -torch.rand(1, 4, 4)
    ue = usage_entropy_ref(torch.cat([uniform, one, negative]))
    assert ue.tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    half = torch.zeros(1, 4, 4)
    half[0, :2] = 1.0  # 8 equal cells of 16: log 8 / log 16
    assert usage_entropy_ref(half).item() == pytest.approx(math.log(8) / math.log(16), abs=1e-6)


def _udd_run(data, form, proxy):
    cfg = build_config("mnist", 2, "smoke", 28, 28, method="udd", form=form, dtype="float64", iterations=3,
                       inner_loop=2, net_width=8, batch_real=8, n_data=16, lr_img=30.0, cfc_weight=0.5,
                       policy="auto", device=str(data.device))
    events = []
    d = Engine(cfg, data, proxy=proxy, trace=lambda ev, o, i, c, rows: events.append((ev, o, i, c, rows)))
    final = d.iterate()
    return events, final, d


def test_batched_equals_sequential_with_every_udd_part_on(mnist_dev):
    # a width-16 proxy: the search's cost (about 80 formations x 9 windows x 4 jitter draws per outer
    # iteration, in float64) falls from about 100 s to about 13 s, and both policies are still chosen
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        proxy = ConvNet(10, 1, 28, width=16).double().eval()
    ev_s, final_s, d_s = _udd_run(mnist_dev, "sequential", proxy)
    ev_b, final_b, d_b = _udd_run(mnist_dev, "batched", proxy)
    m = d_s.matcher
    assert m.n_total == 16 and d_s.region_state.boxes is not None and m.cfc_weight == 0.5
    assert torch.equal(d_s.region_state.boxes, d_b.region_state.boxes)
    assert d_s.policy_counts == d_b.policy_counts and sum(d_s.policy_counts.values()) == 3 * 80
    assert min(d_s.policy_counts.values()) > 0  # the response and the jitter policy both chose
    scale = run_scale(ev_s)
    for a, b in zip(ev_s, ev_b, strict=True):
        assert a[:4] == b[:4]
        assert close_at_run_scale(a[4], b[4], scale), a[:4]
    assert close_at_run_scale(final_s, final_b, scale)


def test_cfc_changes_the_gradient(mnist_data):
    proxy = new_proxy(mnist_data.info, 0).eval()
    outs = []
    for w in (0.0, 1.0):
        cfg = build_config("mnist", 1, "smoke", 28, 28, method="udd", iterations=1, inner_loop=1, net_width=8,
                           batch_real=8, n_data=16, cfc_weight=w, policy="none")
        outs.append(Engine(cfg, mnist_data, proxy=proxy).iterate())
    assert not torch.equal(outs[0], outs[1])


def test_proxy_cache_reused_and_bad_files_retrained(tmp_path, mnist_data):
    kw = dict(epochs=0.002, seed=0, strategy="color_crop_scale_rotate", use_cutmix=False, cache_dir=tmp_path,
              progress=False)
    a, how_a = load_or_train_proxy(mnist_data, **kw)
    b, how_b = load_or_train_proxy(mnist_data, **kw)
    assert (how_a, how_b) == ("trained", "cached")
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    (cached,) = list(tmp_path.glob("*.pt"))
    cached.write_bytes(cached.read_bytes()[:1000])  # truncated
    with pytest.warns(UserWarning, match="unusable"):
        _, how = load_or_train_proxy(mnist_data, **kw)
    assert how == "trained"
    saved = torch.load(cached, weights_only=True)
    saved["key"]["fingerprint"] = "0" * 32  # a cache file for other data under this name
    torch.save(saved, cached)
    with pytest.warns(UserWarning, match="unusable"):
        _, how = load_or_train_proxy(mnist_data, **kw)
    assert how == "trained"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, how = load_or_train_proxy(mnist_data, **kw)
    assert how == "cached"
    # another number of epochs is another key: not the cached one
    _, how = load_or_train_proxy(mnist_data, **{**kw, "epochs": 0.003})
    assert how == "trained"


@pytest.mark.integration
def test_smoke_udd_end_to_end(tmp_path, real_data_dir, device):
    out = tmp_path / "udd"
    rc = distill_main(["--dataset", "mnist", "--ipc", "1", "--method", "udd", "--preset", "smoke", "--data-dir",
                       str(real_data_dir), "--out", str(out), "--no-progress", "--proxy-cache", str(tmp_path / "pc"),
                       "--device", device])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "udd" and 0.0 <= summary["mue_initial"] <= 1.0 and 0.0 <= summary["mue_final"] <= 1.0
    share = summary["policy_share"]
    assert set(share) == {"response", "jitter"} and sum(share.values()) == pytest.approx(1.0)
    assert summary["regions"]["policy"] == "auto" and summary["regions"]["region_size"] == 0.5
    assert summary["eval"]["region_views"] is True and summary["num_train"] == 80
    assert summary["without_region_views"]["num_train"] == 40
    saved = torch.load(out / "distilled.pt", weights_only=True)
    assert saved["boxes"].shape == (40, 4) and saved["region_src"].shape == (40,)
    assert bool(((saved["boxes"][:, 2:] - saved["boxes"][:, :2]) == 7).all())
    # grid.png: every stored image and formation, with its region windows outlined where they were found
    check_grid(np.array(Image.open(out / "grid.png").convert("RGB")), saved["images"], 2,
               saved["dataset_info"]["class_names"], (saved["region_src"], saved["boxes"]))
    for flag, n in (("on", 80), ("off", 40)):
        assert evaluate_main([str(out), "--eval-runs", "1", "--eval-epochs", "1", "--eval-region-views", flag,
                              "--data-dir", str(real_data_dir), "--no-progress", "--device", device]) == 0
        assert json.loads((out / "eval_convnet.json").read_text())["num_train"] == n


def test_udd_flags_need_method_udd(tmp_path, capsys, real_data_dir):
    rc = distill_main(["--dataset", "mnist", "--preset", "smoke", "--policy", "jitter", "--data-dir",
                       str(real_data_dir), "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 2 and "--policy" in capsys.readouterr().err
    rc = distill_main(["--dataset", "mnist", "--preset", "smoke", "--method", "udd", "--region-size", "1.5",
                       "--data-dir", str(real_data_dir), "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 2 and "--region-size" in capsys.readouterr().err
