"""Issue 22's networks trained ahead (--trajectory-batch N, engine/trajectory.py): the networks of N outer
iterations trained together as one grouped model compute the interleaved loop's images, in float64, for
both methods, both forms and both paths, with a partial last group; a stop and resume in the middle of a
group gives the uninterrupted run; the grouped model and the masked SGD step each equal their one-network
forms. (Under torchrun: tests/engine/test_distributed.py.)"""
import numpy as np
import pytest
import torch

from udd_fast import rng
from udd_fast.config import build_config
from udd_fast.data import ArrayDataset, RealData
from udd_fast.engine import Engine
from udd_fast.engine.loop import trajectory_batch
from udd_fast.engine.network_update import sgd_
from udd_fast.engine.trajectory import snapshot_bytes
from udd_fast.models import ConvNet
from udd_fast.proxy import new_proxy
from udd_fast.train import cutmix_box

# Measured on this CPU (2026-12-07): the grouped model's float64 images equal the interleaved loop's
# bitwise (grouped convolutions compute each group as the plain one does); the bound leaves room for
# another convolution algorithm's summation order, far below any wrong step (lr_img 30 x a gradient).
TOL = 1e-12


def _small_mnist(mnist_arrays, n=140):
    """140 real MNIST images: batches of 16 end an epoch every 9 batches with a last one of 12, so each
    network update of 45 images takes 3 or 4 batches and the networks of a group need different counts."""
    ds = mnist_arrays
    return RealData(ArrayDataset(ds.info, np.ascontiguousarray(ds.train_images[:n]), ds.train_labels[:n],
                                 ds.test_images[:100], ds.test_labels[:100]), "cpu")


def _cfg(method, ahead, form="batched", static="off", iterations=5):
    return build_config("mnist", 1, "smoke", 28, 28, method=method, form=form, dtype="float64",
                        iterations=iterations, inner_loop=2, net_width=8, batch_real=16, n_data=45, net_cutmix=True,
                        match_aug="color_crop_cutout", cuda_graphs=static, lr_img=30.0, trajectory_batch=str(ahead),
                        **(dict(policy="response", cfc_weight=0.5) if method == "udd" else {}))


def _run(data, cfg, proxy, state=None):
    events = []
    d = Engine(cfg, data, proxy=proxy, trace=lambda *e: events.append(e))
    if state is not None:
        d.load_state(state)
    final = d.iterate()
    return d, events, final


def _worst(ev_a, ev_b):
    assert [e[:4] for e in ev_a] == [e[:4] for e in ev_b]
    return max(float((a[4] - b[4]).abs().max()) for a, b in zip(ev_a, ev_b, strict=True))


@pytest.fixture(scope="module")
def small(mnist_arrays):
    data = _small_mnist(mnist_arrays)
    return data, {"idc": None, "udd": new_proxy(data.info, 0).double().eval()}


@pytest.mark.parametrize("form,static", [("batched", "off"), ("sequential", "off"), ("batched", "on")],
                         ids=["batched", "sequential", "batched-static"])
@pytest.mark.parametrize("method", ["idc", "udd"])
def test_networks_trained_ahead_give_the_interleaved_images(small, method, form, static):
    """5 outer x 2 inner iterations, float64: N = 2 (groups 0-1, 2-3 and a partial 4) and N = 3 (0-2 and
    a partial 3-4) against N = 1, the interleaved loop: the images at every gradient point and boundary
    and the final images within TOL, the same batch count, the same region boxes."""
    data, proxies = small
    d1, ev1, final1 = _run(data, _cfg(method, 1, form, static), proxies[method])
    assert d1.trajectories is None
    # the run met ragged batches and both CutMix decisions, so counts and masks differ across the group
    b = range(d1.net_batch)
    assert {d1.net_update.batches.size(i) for i in b} == {16, 12}
    assert {cutmix_box(rng.key(rng.key(0, "net_update", i), "cutmix"), 28, 28) is None for i in b} == {True, False}
    assert (final1 - ev1[0][4]).abs().max() > 0.1  # the images really moved
    for n in (2, 3):
        dn, evn, finaln = _run(data, _cfg(method, n, form, static), proxies[method])
        assert dn.trajectories is not None and dn.trajectories.N == n
        assert dn.group == (range(3, 5) if n == 3 else range(4, 5))  # the last group was partial
        worst = _worst(ev1, evn)
        print(f"{method} {form} {static} N={n}: worst difference {worst:.3g}")
        assert worst <= TOL
        assert float((final1 - finaln).abs().max()) <= TOL
        assert dn.net_batch == d1.net_batch
        if method == "udd":
            assert torch.equal(d1.region_state.boxes, dn.region_state.boxes)


def test_each_network_of_a_group_takes_its_own_batch_count(small):
    """The group's networks start at different batch numbers, so one inner iteration's update takes 4
    batches for one network (an epoch's short batch inside) and 3 for another: the lockstep count is
    the most, and a network that is done is masked out. Each network's batch count and, for network 1,
    its parameters after its 2 updates are the interleaved loop's."""
    data, _ = small
    d = Engine(_cfg("idc", 3), data)
    d.start_network(0)
    t = d.trajectories
    per_net = []
    b = d.net_batch
    for _ in range(3):
        row = []
        for _ in range(2):
            numbers, b = d.net_update.batches.run_until(b, 45)
            row.append(len(numbers))
        per_net.append(row)
    assert any(len(set(col)) > 1 for col in zip(*per_net)), per_net  # some inner iteration differs
    for inner in range(2):
        t.record(inner)
        t.train(inner)
    assert t.steps == [max(col) for col in zip(*per_net)]  # lockstep: the most any network needs
    assert t.counter.tolist() == np.cumsum([sum(r) for r in per_net]).tolist()  # each its own count
    # network 1 after its 2 updates, against the interleaved loop's network of outer iteration 1
    ref = Engine(_cfg("idc", 1), data)
    net, opt = ref.start_network(1)
    ref.net_update.net_batch = sum(per_net[0])
    for _ in range(2):
        ref.network_update(net, opt)
    for p, q in zip(net.parameters(), t.params, strict=True):
        assert float((p - q[1]).abs().max()) <= 1e-13


@pytest.mark.parametrize("method", ["idc", "udd"])
def test_a_stop_in_the_middle_of_a_group_resumes_to_the_uninterrupted_run(small, method):
    """N = 3: a run stopped after outer iteration 1 (its group 0-2 half consumed), its state loaded into a
    new engine that runs on to 5, gives the uninterrupted N = 3 run's state; the resumed run starts its
    own group at 2."""
    data, proxies = small
    straight, _, final = _run(data, _cfg(method, 3), proxies[method])
    first, _, _ = _run(data, _cfg(method, 3, iterations=2), proxies[method])
    assert first.group == range(0, 2)  # an engine's groups end with its run: this one's is partial
    st = first.state()
    resumed, _, final_r = _run(data, _cfg(method, 3), proxies[method], st)
    assert resumed.group == range(2, 5)
    want, got = straight.state(), resumed.state()
    assert got["net_batch"] == want["net_batch"] and got["outer_done"] == 5
    for key in ("S", "buf", "pending"):
        assert float((want[key] - got[key]).abs().max()) <= TOL, key
    assert float((final - final_r).abs().max()) <= TOL


def test_the_static_inner_iteration_reads_no_counter_back(small):
    """On the static path the snapshot is chosen by the device counters (outer iteration's slot, inner
    iteration): loading it must not read them back (a 0-dim tensor index would call item(), a sync that
    breaks a CUDA graph). Checked where a read cannot happen: counters and snapshots on the meta device.
    And a whole static inner iteration with networks trained ahead reads nothing back (host guard)."""
    from host_guard import no_host_reads
    data, _ = small
    d = Engine(_cfg("idc", 2, static="on"), data)
    net, opt = d.start_network(0)
    d.boundary(0)
    d.inner_iteration(net, opt, 0, 0)  # makes the static inner iteration
    with no_host_reads():
        d.inner_iteration(net, opt, 0, 1)
    t = d.trajectories
    t.snaps = [s.to("meta") for s in t.snaps]
    params = [torch.empty_like(p, device="meta") for p in net.parameters()]
    counter = torch.zeros((), dtype=torch.int64, device="meta")
    t.load(params, counter, counter)


def test_the_grouped_model_is_each_network(small):
    """forward_stacked of 3 networks equals each network's forward, and its parameter gradients each
    network's own (float64)."""
    torch.manual_seed(0)
    nets = [ConvNet(10, 1, 28, width=8).double() for _ in range(3)]
    x = torch.randn(3, 5, 1, 28, 28, dtype=torch.float64)
    stacked = [torch.stack(ps).detach().requires_grad_(True) for ps in zip(*[n.parameters() for n in nets])]
    out = nets[0].forward_stacked(x, stacked)
    out.square().sum().backward()
    for k, net in enumerate(nets):
        ref = net(x[k])
        assert torch.allclose(out[k], ref, rtol=0, atol=1e-13)
        ref.square().sum().backward()
        for p, s in zip(net.parameters(), stacked, strict=True):
            assert torch.allclose(p.grad, s.grad[k], rtol=0, atol=1e-12)


def test_a_masked_sgd_step_moves_the_active_networks_only():
    """sgd_ with `active`: the active networks' parameters and momentum are what the unmasked step gives
    (bitwise), the others' untouched."""
    torch.manual_seed(2)
    params = [torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)]
    momentum = [torch.randn_like(p) for p in params]
    grads = [torch.randn_like(p) for p in params]
    want_p, want_m = [p.clone() for p in params], [m.clone() for m in momentum]
    sgd_(want_p, grads, want_m, 0.01, 0.9, 5e-4)
    before_p, before_m = [p.clone() for p in params], [m.clone() for m in momentum]
    sgd_(params, grads, momentum, 0.01, 0.9, 5e-4, active=torch.tensor([True, False, True]))
    for p, m, wp, wm, bp, bm in zip(params, momentum, want_p, want_m, before_p, before_m):
        assert torch.equal(p[[0, 2]], wp[[0, 2]]) and torch.equal(m[[0, 2]], wm[[0, 2]])
        assert torch.equal(p[1], bp[1]) and torch.equal(m[1], bm[1])
        assert not torch.equal(p[0], bp[0])


def test_auto_and_the_stated_memory(mnist_data):
    """auto is 1 on the CPU; a number is taken as given; the snapshots of CIFAR-10's ConvNet-3 at 100
    inner iterations take 128 MB per outer iteration in float32 (the issue's 'about 130 MB')."""
    cfg = build_config("mnist", 1, "smoke", 28, 28, net_width=8)
    assert trajectory_batch(cfg, torch.device("cpu"), lambda: 1) == 1
    cfg.match.trajectory_batch = "3"
    assert trajectory_batch(cfg, torch.device("cpu"), lambda: 1) == 3
    net = ConvNet(10, 3, 32, width=128)
    assert sum(p.numel() for p in net.parameters()) == 320_010
    assert snapshot_bytes(net, 100) == 128_004_000
    for bad in ("0", "-1", "two", "1.5", "02"):
        with pytest.raises(ValueError, match="trajectory_batch"):
            build_config("mnist", 1, "smoke", 28, 28, trajectory_batch=bad)


def test_grouping_is_refused_where_it_cannot_run():
    """Only ConvNets without --early train ahead: the engine and the command line's checks give one message
    (the command line's: tests/cli/test_jpeg_runs.py)."""
    from udd_fast.engine import trajectory_problem
    for over in (dict(net_arch="resnet_ap10"), dict(early=1)):
        cfg = build_config("mnist", 1, "smoke", 28, 28, trajectory_batch="2", **over)
        problem = trajectory_problem(cfg)
        assert problem.startswith("--trajectory-batch 2 trains ConvNets ahead")
        with pytest.raises(ValueError, match="trains ConvNets ahead"):
            trajectory_batch(cfg, torch.device("cpu"), lambda: 0)
    for n in ("1", "auto"):
        assert trajectory_problem(build_config("mnist", 1, "smoke", 28, 28, trajectory_batch=n, early=1)) is None
    assert trajectory_problem(build_config("mnist", 1, "smoke", 28, 28, trajectory_batch="4")) is None
