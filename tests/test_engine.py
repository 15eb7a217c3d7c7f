"""Engine behaviour beyond the equivalence: initialization, subsampling, NaN guard."""
import pytest
import torch

from udd_fast.config import build_config
from udd_fast.decode import mix_init
from udd_fast.engine import Engine


def _distiller(data, **over):
    cfg = build_config("mnist", 2, "smoke", 28, 28, net_width=8, batch_real=8, n_data=16, device=str(data.device),
                       **over)
    return Engine(cfg, data)


def test_initial_images_are_the_mix_of_each_class(mnist_dev):
    d = _distiller(mnist_dev)
    for c in range(10):
        first = mnist_dev.first_of_class(c, 8)
        assert torch.equal(d.S[2 * c:2 * c + 2], mix_init(first, 2, 2))
    assert torch.equal(d.labels().cpu(), torch.arange(10).repeat_interleave(2))


def test_subsample_keeps_distinct_formations(mnist_dev):
    d = _distiller(mnist_dev, batch_syn_max=5)
    idx = d.subsample_index(0, 0)
    assert idx.shape == (10, 5)
    assert all(len(set(row.tolist())) == 5 for row in idx)
    assert not torch.equal(idx, d.subsample_index(0, 1))
    assert _distiller(mnist_dev).subsample_index(0, 0) is None


def test_nan_images_stop_the_run_with_a_clear_error(mnist_dev):
    d = _distiller(mnist_dev, iterations=1, inner_loop=1)
    d.S[3, 0, 5, 5] = float("nan")
    d.pending = torch.zeros_like(d.S)  # the clamp would otherwise hide nothing: NaN survives clamp
    with pytest.raises(FloatingPointError, match="NaN"):
        d.iterate()
    assert d.outer_done == 0
