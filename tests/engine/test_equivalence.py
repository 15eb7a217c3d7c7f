"""Section 4: the batched all-class form equals IDC's sequential per-class form, in float64, at every
gradient point and every outer boundary, with the clamp active."""
import torch

from helpers import close_at_run_scale as _close, run_scale as _scale
from udd_fast.config import build_config
from udd_fast.engine import Engine


def _run(data, form, **over):
    cfg = build_config("mnist", 2, "smoke", 28, 28, form=form, dtype="float64", iterations=3, inner_loop=2,
                       net_width=8, batch_real=8, n_data=16, device=str(data.device), **over)
    events = []
    d = Engine(cfg, data, trace=lambda ev, o, i, c, rows: events.append((ev, o, i, c, rows)))
    start = d.S.clone()
    final = d.iterate()
    return start, events, final, d


def test_batched_equals_sequential_float64_with_clamp(mnist_dev):
    # a large image lr makes the clamp bite at every boundary
    start_s, ev_s, final_s, d_s = _run(mnist_dev, "sequential", lr_img=30.0)
    start_b, ev_b, final_b, d_b = _run(mnist_dev, "batched", lr_img=30.0)
    assert torch.equal(start_s, start_b)
    assert [e[:4] for e in ev_s] == [e[:4] for e in ev_b]
    grads = [e for e in ev_s if e[0] == "grad"]
    assert len(grads) == 3 * 2 * 10
    clamped = 0
    scale = _scale(ev_s)
    for a, b in zip(ev_s, ev_b):
        assert _close(a[4], b[4], scale), a[:4]
    for a in ev_s:
        if a[0] == "boundary" and a[1] > 0:
            clamped += int(((a[4] == 0) | (a[4] == 1)).sum())
    # the clamp was active: many pixels sit exactly on the bounds after it
    assert clamped > 1000
    # and the images really moved between boundaries (the test would pass trivially otherwise)
    assert (ev_s[-1][4] - start_s[:2]).abs().max() > 0.1
    assert _close(final_s, final_b, scale)
    assert d_s.net_batch == d_b.net_batch


def test_batched_equals_sequential_with_subsampling(mnist_dev):
    # 8 formations per class but at most 5 in the synthetic batch: the keyed subsample is used by both forms
    _, ev_s, final_s, _ = _run(mnist_dev, "sequential", lr_img=30.0, batch_syn_max=5)
    _, ev_b, final_b, _ = _run(mnist_dev, "batched", lr_img=30.0, batch_syn_max=5)
    scale = _scale(ev_s)
    for a, b in zip(ev_s, ev_b, strict=True):
        assert a[:4] == b[:4]
        assert _close(a[4], b[4], scale), a[:4]
    assert _close(final_s, final_b, scale)
