"""Issue 13's fast loop, on the CPU: an inner iteration reads nothing back to the host, on every backend of
the ops (the plain-PyTorch references included: a machine without the extensions runs them); the static path
(padded, masked batches; draws keyed from device counters; CutMix by mask) computes what the plain path
computes; the compiled network update agrees with eager. A failed CUDA-graph capture falling back to
eager is tests/engine/test_replay.py."""
import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from helpers import close_at_run_scale, run_scale
from host_guard import no_host_reads
from udd_fast import rng
from udd_fast.config import UsageError, build_config
from udd_fast.data import ArrayDataset, DatasetInfo, RealData
from udd_fast.distributed import Comm
from udd_fast.engine import Engine, static_path
from udd_fast.ops.backend import use_backend, why_unavailable
from udd_fast.pipeline.checks import check_world
from udd_fast.proxy import new_proxy
from udd_fast.sampling import class_batch_indices
from udd_fast.train import cutmix_box


# The backends the loop runs on: the references ("torch", what a machine without the extensions runs),
# the device's extension (cpp on the CPU, cuda on CUDA) and Triton.
LOOP_BACKENDS = ["torch", "extension", pytest.param("triton", marks=pytest.mark.triton)]


@pytest.fixture(params=LOOP_BACKENDS)
def loop_backend(request, device):
    """Each backend of LOOP_BACKENDS selected in turn on the device under test (skipped, saying why,
    where it cannot run there)."""
    name = ("cpp" if device == "cpu" else "cuda") if request.param == "extension" else request.param
    if name == "triton" and device == "cpu":
        # measured 2026-12-07 with triton 3.6.0 on a loaded 2-core VM: 80 to 130 s per case, all passing
        pytest.skip("triton on the CPU is its interpreter, minutes per case: the loop is guarded with triton on CUDA")
    why = why_unavailable(name, torch.device(device))
    if why:
        pytest.skip(f"the {name} backend cannot run on {device}: {why}")
    with use_backend(name):
        yield name


def _cfg(method, data, **over):
    values = dict(form="batched", seed=3, iterations=2, inner_loop=2, net_width=8, batch_real=8, n_data=24,
                  net_cutmix=True, match_aug="color_crop_cutout", device=str(data.device))
    values.update(over)
    return build_config("mnist", 2, "smoke", 28, 28, method=method, **values)


GUARDED = [("idc", {}), ("udd", dict(policy="response", cfc_weight=0.5)),
           ("udd", dict(policy="jitter", jitter_draws=1, cfc_weight=0.5, batch_syn_max=12))]


@pytest.mark.parametrize("static", ["off", "on"], ids=["plain", "static"])
@pytest.mark.parametrize("method,over", GUARDED, ids=["idc", "udd-response-cfc", "udd-jitter-cfc-subsample"])
def test_inner_iterations_read_nothing_back(mnist_dev, loop_backend, method, over, static):
    """Whole inner iterations of the batched form, the last one (split step) included, with CutMix on
    and region views in the synthetic batch, under the guard of tests/engine/host_guard.py, on each
    backend of the ops; the boundary before them reads the device (the region search) outside it."""
    proxy = new_proxy(mnist_dev.info, 0).eval() if method == "udd" else None
    d = Engine(_cfg(method, mnist_dev, cuda_graphs=static, **over), mnist_dev, proxy=proxy)
    start = d.S.clone()
    with d.precision():
        net, opt = d.start_network(0)
        d.boundary(0)
        if method == "udd":
            assert d.region_state.boxes is not None and d.matcher.n_total == 16  # views are in the batch
        with no_host_reads(mnist_dev.device) as guard:
            for inner in range(d.cfg.match.inner_loop):
                loss = d.inner_iteration(net, opt, 0, inner)
        assert guard.seen == []
    assert d.pending is not None and torch.isfinite(loss) and not torch.equal(d.S, start)
    # the network update ran CutMix in these batches (a mixing batch and a plain one, as drawn on the host)
    mixes = [cutmix_box(rng.key(rng.key(3, "net_update", b), "cutmix"), 28, 28) for b in range(d.net_batch)]
    mixes = [m is not None for m in mixes]
    assert any(mixes) and not all(mixes)


def test_the_guard_catches_every_kind_of_host_read():
    """Positive controls: what the loop did before its inner iteration was freed of host reads is caught."""
    ci, cc = torch.tensor([[0, 1, 2]]), torch.tensor([3])
    x = torch.ones(4)
    with no_host_reads(strict=False) as guard:
        class_batch_indices(ci, cc, 0, 0, 2)  # the class counts read back from the device
        rng.uniform(torch.tensor([5]), 4, torch.float64)  # a key copied from host memory
        bool(x.any())
        float(x.sum())
        x[x > 0]
        x.nonzero()
    assert guard.seen == ["tolist", "tensor of host data list", "__bool__", "__float__", "indexing by a boolean mask",
                          "nonzero"]
    with pytest.raises(AssertionError, match="host read inside the inner iteration: item"):
        with no_host_reads():
            x.sum().item()
    with no_host_reads():  # and what the loop does now is not
        class_batch_indices(ci, cc, 0, 0, 2, [3])
        rng.uniform(rng.key_tensor(5), 4, torch.float64)


def _small_mnist(mnist_arrays, n=140):
    """The first n training images of real MNIST: an epoch of a 16-image batch ends every 9 batches,
    with a last batch of 12, so the network update meets ragged batches often."""
    ds = mnist_arrays
    return RealData(ArrayDataset(ds.info, np.ascontiguousarray(ds.train_images[:n]), ds.train_labels[:n],
                                 ds.test_images[:100], ds.test_labels[:100]), "cpu")


def _run(data, method, static, proxy=None):
    cfg = build_config("mnist", 1, "smoke", 28, 28, method=method, form="batched", dtype="float64", iterations=2,
                       inner_loop=2, net_width=8, batch_real=16, n_data=40, net_cutmix=True,
                       match_aug="color_crop_cutout", cuda_graphs=static, lr_img=30.0,
                       **(dict(policy="response", cfc_weight=0.5) if method == "udd" else {}))
    events = []
    d = Engine(cfg, data, proxy=proxy, trace=lambda *e: events.append(e))
    final = d.iterate()
    return d, events, final


@pytest.mark.parametrize("method", ["idc", "udd"])
def test_static_path_equals_plain_path(mnist_arrays, method):
    """The static path (--cuda-graphs on, run on the CPU without capture) against the plain path, float64,
    2 outer x 2 inner iterations: the same images at every gradient point and boundary, the same final
    images, and the same network after its last update, up to float64 round-off. Its network batches are
    padded to 16 and masked, CutMix goes by mask; the plain path's are ragged and branch, as IDC's."""
    data = _small_mnist(mnist_arrays)
    proxy = new_proxy(data.info, 0).double().eval() if method == "udd" else None
    d_p, ev_p, final_p = _run(data, method, "off", proxy)
    d_s, ev_s, final_s = _run(data, method, "on", proxy)
    assert d_p.net_update.static is None and d_s.net_update.static is not None
    # the run met ragged batches (an epoch's last, 12 of 16) and both CutMix decisions
    b = range(d_p.net_batch)
    sizes = {d_p.net_update.batches.size(i) for i in b}
    mixes = {cutmix_box(rng.key(rng.key(0, "net_update", i), "cutmix"), 28, 28) is not None for i in b}
    assert sizes == {16, 12} and mixes == {True, False} and d_p.net_batch == d_s.net_batch == 2 * 2 * 3
    scale = run_scale(ev_p)
    assert [e[:4] for e in ev_p] == [e[:4] for e in ev_s]
    for a, c in zip(ev_p, ev_s, strict=True):
        assert close_at_run_scale(a[4], c[4], scale), a[:4]
    assert close_at_run_scale(final_p, final_s, scale)
    assert (final_p - ev_p[0][4]).abs().max() > 0.1  # the images really moved
    if method == "udd":
        assert torch.equal(d_p.region_state.boxes, d_s.region_state.boxes)


def test_padded_masked_batch_equals_the_ragged_one(mnist_arrays):
    """One network-update batch that is an epoch's last (12 of 16 images), mixing by CutMix: the static
    step's loss, gradient step and momentum equal train_step's on the ragged batch (float64)."""
    data = _small_mnist(mnist_arrays)
    cfg = build_config("mnist", 1, "smoke", 28, 28, dtype="float64", net_width=8, batch_real=16, net_cutmix=True,
                       cuda_graphs="on")
    b = next(i for i in range(8, 100, 9)  # an epoch's last batch whose draw mixes
             if cutmix_box(rng.key(rng.key(0, "net_update", i), "cutmix"), 28, 28) is not None)
    nets = []
    for static in ("off", "on"):
        cfg.match.cuda_graphs = static
        d = Engine(cfg, data)
        net, opt = d.start_network(0)
        d.net_update.net_batch = b
        d.cfg.net.n_data = 1  # one batch
        d.network_update(net, opt)
        assert d.net_update.net_batch == b + 1 and d.net_update.batches.size(b) == 12
        nets.append([p.detach().clone() for p in net.parameters()])
        if static == "on":
            momentum = d.net_update.static.momentum
        else:
            momentum = [opt.state[p]["momentum_buffer"] for p in net.parameters()]
        nets[-1] += [m.clone() for m in momentum]
    fresh = list(Engine(cfg, data).new_network(0).parameters())
    for p, q in zip(nets[0], nets[1], strict=True):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-15)
    assert any(not torch.equal(p, f) for p, f in zip(nets[0], fresh))  # the step moved the network


def test_compiled_network_update_agrees_with_eager(mnist_data):
    """--compile on (inductor's C++ on the CPU) against the eager static step, float32, one inner
    iteration's network update (4 batches of 16 with CutMix): every parameter within 1e-5 of max(1, its
    largest magnitude). Measured on this CPU (2026-12-03): at most 1.2e-7, float32 round-off."""
    out = []
    for compile_net in (False, True):
        cfg = build_config("mnist", 1, "smoke", 28, 28, net_width=8, batch_real=16, n_data=64, net_cutmix=True,
                           cuda_graphs="on", compile="on" if compile_net else "off")
        d = Engine(cfg, mnist_data)
        net, opt = d.start_network(0)
        fresh = [p.detach().clone() for p in net.parameters()]
        graphs = counters["stats"]["unique_graphs"]
        d.network_update(net, opt)
        out.append([p.detach().clone() for p in net.parameters()])
        assert (counters["stats"]["unique_graphs"] > graphs) == compile_net  # inductor compiled the step
    for e, c, f in zip(*out, fresh, strict=True):
        scale = float((e - f).abs().max())
        assert scale > 0  # the update moved this parameter
        assert float((e - c).abs().max()) <= 1e-5 * max(1.0, float(e.abs().max())), float((e - c).abs().max())


def test_static_settings_are_refused_under_torchrun(mnist_data):
    for over, flag in ((dict(cuda_graphs="on"), "--cuda-graphs on"), (dict(compile="on"), "--compile on")):
        cfg = build_config("mnist", 1, "smoke", 28, 28, form="batched", **over)
        with pytest.raises(UsageError, match=flag):
            check_world(cfg, Comm(rank=0, world=2), 10)
    auto = build_config("mnist", 1, "smoke", 28, 28, form="batched", cuda_graphs="auto", compile="auto",
                        iterations=10000)  # auto would compile this long a run in one process
    check_world(auto, Comm(rank=0, world=2), 10)
    assert static_path(auto, torch.device("cpu")) == (True, False, True)
    assert static_path(auto, torch.device("cpu"), distributed=True) == (False, False, False)
    with pytest.raises(ValueError, match="one process"):
        Engine(build_config("mnist", 1, "smoke", 28, 28, form="batched", cuda_graphs="on"), mnist_data,
                  comm=Comm(rank=0, world=2))


def test_resnet_ap10_with_early_training_on_every_path():
    """IDC's ImageNet network with --early 1 (3 classes of random 16-pixel images, float64): the static path
    equals the plain one, and the batched form the sequential one, to float64 round-off; --early trains
    whole epochs (each outer iteration's network first sees all 48 images, then n_data per inner iteration)."""
    k, size = 3, 16
    info = DatasetInfo(name="imagenet10", channels=3, size=size, num_classes=k, mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), class_names=("a", "b", "c"), size_base=224)
    rs = np.random.default_rng(0)
    x = rs.integers(0, 256, (48, 3, size, size), dtype=np.uint8)
    y = np.arange(48) % k
    data = RealData(ArrayDataset(info, x, y, x[:6], y[:6]), "cpu")
    finals, batches = {}, {}
    for form, static in (("sequential", "off"), ("batched", "off"), ("batched", "on")):
        cfg = build_config("imagenet10", 1, "smoke", size, 224, num_classes=k, form=form, cuda_graphs=static,
                           dtype="float64", iterations=2, inner_loop=1, batch_real=8, n_data=16, early=1,
                           lr_img=0.5)
        assert cfg.net.net_arch == "resnet_ap10" and cfg.net.net_cutmix_p == 1.0
        d = Engine(cfg, data)
        finals[form, static] = d.iterate()
        batches[form, static] = d.net_batch
    # per outer iteration: one epoch (48 images: 6 batches of 8) then 16 images (2 batches)
    assert set(batches.values()) == {2 * (6 + 2)}
    ref = finals["sequential", "off"]
    assert not torch.equal(ref, Engine(build_config("imagenet10", 1, "smoke", size, 224, num_classes=k,
                                                    dtype="float64", iterations=0), data).S)
    for key, final in finals.items():
        torch.testing.assert_close(final, ref, rtol=0, atol=1e-10, msg=str(key))
