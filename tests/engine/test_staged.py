"""Training images that stay in host memory (--real-on-device off; data/staged.py, engine/feed.py): each inner
iteration's images are staged one iteration ahead, and the run computes exactly what it computes with the
images copied whole onto the device, on every path of the loop; a read the plan missed is an error, never a
wrong image; the inner iteration stays free of host reads. On CUDA (bench/gpu_session.py runs -m gpu) the
same tests run with pinned buffers, the copy stream and CUDA-graph capture."""
import numpy as np
import pytest
import torch

from host_guard import no_host_reads
from udd_fast.config import build_config
from udd_fast.data import ArrayDataset, RealData
from udd_fast.data.staged import StagedImages
from udd_fast.engine import Engine
from udd_fast.engine.feed import Feed
from udd_fast.proxy import new_proxy


def test_staged_images_serve_the_active_set_only(device):
    gen = torch.Generator().manual_seed(0)
    host = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8, generator=gen)
    st = StagedImages(host, device, capacity=12)
    with pytest.raises(RuntimeError, match="prefetch first"):
        st.activate()
    first = torch.tensor([7, 3, 7, 0, 49])  # repeats allowed
    st.prefetch(first)
    st.activate()
    ask = torch.tensor([49, 7, 7, 3, 0, 3], device=device)
    assert torch.equal(st.read(ask).cpu(), host[ask.cpu()])
    # one ahead: the next set is copied while the active one is still served
    second = torch.randint(0, 50, (12,), generator=gen)
    st.prefetch(second)
    assert torch.equal(st.read(ask).cpu(), host[ask.cpu()])
    st.activate()
    assert torch.equal(st.read(second.to(device)).cpu(), host[second])
    gone = next(i for i in first.tolist() if i not in second.tolist())
    if torch.device(device).type == "cpu":  # on CUDA a device-side assertion ends the process: not tested there
        with pytest.raises(RuntimeError, match="not staged for this iteration"):
            st.read(torch.tensor([gone]))
    with pytest.raises(ValueError, match="13 images to stage, room for 12"):
        st.prefetch(torch.zeros(13, dtype=torch.int64))


def _data(mnist_arrays, device, where, n=140):
    """The first n training images of real MNIST (an epoch of 16-image batches ends every 9 batches with a
    batch of 12, so the network update meets ragged and padded batches), copied or left in host memory."""
    ds = mnist_arrays
    return RealData(ArrayDataset(ds.info, np.ascontiguousarray(ds.train_images[:n]), ds.train_labels[:n],
                                 ds.test_images[:100], ds.test_labels[:100]), device, where)


PATHS = [("idc", "batched", "off", "1", 0), ("idc", "batched", "on", "1", 0), ("idc", "batched", "off", "2", 0),
         ("idc", "batched", "on", "2", 0), ("idc", "sequential", "off", "1", 0), ("idc", "batched", "on", "1", 1),
         ("udd", "batched", "on", "1", 0)]


@pytest.mark.parametrize("method,form,static,ahead,early", PATHS,
                         ids=["plain", "static", "plain-ahead2", "static-ahead2", "sequential", "static-early",
                              "udd-static"])
def test_staged_run_equals_the_copied_one(mnist_arrays, device, method, form, static, ahead, early):
    """3 outer x 3 inner iterations, float64, CutMix on: the same images bit for bit, and the same batch
    count, whether the training images were copied onto the device or staged per inner iteration."""
    out = {}
    for where in ("on", "off"):
        data = _data(mnist_arrays, device, where)
        assert data.placement == where
        cfg = build_config("mnist", 1, "smoke", 28, 28, method=method, form=form, dtype="float64", iterations=3,
                           inner_loop=3, net_width=8, batch_real=16, n_data=40, net_cutmix=True, early=early,
                           match_aug="color_crop_cutout", cuda_graphs=static, trajectory_batch=ahead, lr_img=30.0,
                           device=device, **(dict(policy="response", cfc_weight=0.5) if method == "udd" else {}))
        proxy = new_proxy(data.info, 0).double().eval() if method == "udd" else None
        d = Engine(cfg, data, proxy=proxy)
        assert (d.feed is not None) == (where == "off") and d.n_ahead == int(ahead)
        out[where] = d.iterate().cpu(), d.net_batch
    assert torch.equal(out["on"][0], out["off"][0])
    assert out["on"][1] == out["off"][1] > 0


def test_a_read_the_plan_missed_is_an_error(mnist_arrays, monkeypatch):
    """Positive control: a plan without the network update's batches fails at their first read."""
    real_reads = Feed.reads
    monkeypatch.setattr(Feed, "reads", lambda self, o, i: real_reads(self, o, i)[:self.engine.K * 16])
    cfg = build_config("mnist", 1, "smoke", 28, 28, iterations=1, inner_loop=2, net_width=8, batch_real=16,
                       n_data=40)
    d = Engine(cfg, _data(mnist_arrays, "cpu", "off"))
    with pytest.raises(RuntimeError, match="not staged for this iteration"):
        d.iterate()


@pytest.mark.parametrize("static", ["off", "on"], ids=["plain", "static"])
def test_staged_inner_iterations_read_nothing_back(mnist_arrays, device, static):
    """The guard of tests/engine/host_guard.py over whole inner iterations with staged images: the
    activation, the reads and the next iteration's prefetch (host work on host memory) included."""
    cfg = build_config("mnist", 1, "smoke", 28, 28, iterations=1, inner_loop=3, net_width=8, batch_real=16,
                       n_data=40, net_cutmix=True, cuda_graphs=static, device=device)
    d = Engine(cfg, _data(mnist_arrays, device, "off"))
    with d.precision():
        net, opt = d.start_network(0)
        d.boundary(0)
        d.inner_iteration(net, opt, 0, 0)  # the first is staged at its start (and captured, on CUDA)
        with no_host_reads(device) as guard:
            for inner in (1, 2):
                d.inner_iteration(net, opt, 0, inner)
        assert guard.seen == []
