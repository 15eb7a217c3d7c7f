"""Engine behaviour beyond the equivalence: initialization, subsampling, NaN guard."""
import pytest
import torch

from helpers import assert_same_run
from udd_fast.config import build_config
from udd_fast.decode import mix_init
from udd_fast.engine import Engine
from udd_fast.models import ConvNet


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


@pytest.mark.parametrize("method", ["idc", "udd"])
def test_a_state_loaded_into_a_new_engine_continues_as_one_run(mnist_dev, method):
    """Resume at the engine's level (docs/method.md section 5): 2 outer iterations, state() into a new
    Engine, 2 more give the state of 4 straight ones: bitwise on the CPU, within float32 reordering on
    CUDA (the command line's 2 + 2 == 4 is tests/cli/test_resume.py)."""
    proxy = None
    over = dict(inner_loop=2, method=method)
    if method == "udd":  # every UDD part: region search (auto policy), region views, CFC
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            proxy = ConvNet(10, 1, 28, width=8).eval()
        over.update(policy="auto", cfc_weight=0.5)
    straight = Engine(build_config("mnist", 2, "smoke", 28, 28, net_width=8, batch_real=8, n_data=16, iterations=4,
                                   device=str(mnist_dev.device), **over), mnist_dev, proxy=proxy)
    straight.iterate()
    first = Engine(build_config("mnist", 2, "smoke", 28, 28, net_width=8, batch_real=8, n_data=16, iterations=2,
                                device=str(mnist_dev.device), **over), mnist_dev, proxy=proxy)
    first.iterate()
    resumed = Engine(build_config("mnist", 2, "smoke", 28, 28, net_width=8, batch_real=8, n_data=16, iterations=4,
                                  device=str(mnist_dev.device), **over), mnist_dev, proxy=proxy)
    resumed.load_state(first.state())
    resumed.iterate()
    want, got = straight.state(), resumed.state()
    assert got["outer_done"] == 4 and got["net_batch"] == want["net_batch"] > 0
    assert got["policy_counts"] == want["policy_counts"]
    for key in ("S", "buf", "pending", "region_boxes"):
        if want[key] is None:
            assert got[key] is None, key
        else:
            assert_same_run(got[key].double(), want[key].double(), mnist_dev.device.type, 1e-4)
    if method == "udd":
        assert want["region_boxes"] is not None and min(want["policy_counts"].values()) > 0
