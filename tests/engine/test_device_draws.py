"""Issue 22's draws on the device: every draw of an inner iteration computed from device counters is
bit for bit the draw keyed on the host (each stream on its own), and the static path's inner iteration
dispatches almost nothing outside its replays."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import require_dataset
from udd_fast import rng
from udd_fast.augment import Strategy, sample_params
from udd_fast.config import build_config
from udd_fast.data import RealData, load_dataset
from udd_fast.engine import Engine
from udd_fast.engine.replay import Replay
from udd_fast.proxy import new_proxy
from udd_fast.sampling import EpochBatches, class_batch_indices
from udd_fast.train import augment_params, cutmix_box, cutmix_on_device, cutmix_partners


def _t(i):
    return torch.tensor(i, dtype=torch.int64)


def test_key_on_device_counters_is_the_host_key():
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        seed, outer, inner = (int(v) for v in torch.randint(0, 2 ** 31, (3,), generator=g))
        host = rng.key(seed, "match_aug", outer, inner)
        assert int(rng.key_on(_t(seed), "match_aug", _t(outer), _t(inner))) == host
        assert int(rng.chain(rng.key_tensor(rng.key(seed, "match_aug")), _t(outer), _t(inner))) == host
        assert int(rng.key_on(_t(host), "aug")) == rng.key(host, "aug")


def _matcher(mnist_data, method="idc", **over):
    cfg = build_config("mnist", 2, "smoke", 28, 28, method=method, form="batched", seed=7, net_width=8,
                       batch_real=8, match_aug="color_crop_cutout_flip_scale_rotate", **over)
    proxy = new_proxy(mnist_data.info, 0).eval() if method == "udd" else None
    return Engine(cfg, mnist_data, proxy=proxy)


@pytest.mark.parametrize("outer,inner", [(0, 0), (3, 1), (1999, 99)])
def test_matching_draws_on_device_counters_are_the_host_draws(mnist_data, outer, inner):
    """The siamese augmentation per class and the synthetic subsample, from device counters, against
    the host-keyed expressions they replace (subkeys of key(seed, purpose, outer, inner))."""
    d = _matcher(mnist_data, "udd", policy="response", batch_syn_max=3)
    m = d.matcher
    own = torch.arange(10)
    host_keys = {p: rng.subkeys(rng.key(7, p, outer, inner), own) for p in ("match_aug", "subsample")}
    want = sample_params(host_keys["match_aug"], m.strategy, 28)
    assert torch.equal(m.params(_t(outer), _t(inner)), want)
    assert torch.equal(m.params(outer, inner), want)
    assert m.n_total == 2 * 2 * 2 ** 2 and m.n_syn == 3  # ipc 2, factor 2, formations and their views
    want_sub = rng.permutation(host_keys["subsample"], m.n_total)[:, :3]
    assert torch.equal(m.subsample_index(_t(outer), _t(inner)), want_sub)
    assert torch.equal(m.subsample_index(outer, inner), want_sub)


@pytest.mark.parametrize("batch", [3, 8, 16])
def test_class_batches_are_each_class_stream_whatever_the_step_is(batch):
    """Batch `step` of class c is positions [step*B, (step+1)*B) of its stream of keyed epochs; for an
    int step and a device step alike, with classes of very different sizes (one smaller than a batch)."""
    counts = torch.tensor([7, 13, 5, 40])
    table = torch.full((4, 40), -1)
    for c in range(4):
        table[c, :counts[c]] = torch.arange(int(counts[c])) + 100 * c
    base = rng.subkeys(rng.key(11, "class_epoch"), torch.arange(4))
    for step in (0, 1, 5, 17, 123):
        want = torch.empty(4, batch, dtype=torch.int64)
        for c in range(4):
            for t in range(batch):
                epoch, at = divmod(step * batch + t, int(counts[c]))
                perm = rng.permutation(rng.fold(base[c:c + 1], epoch), 40, valid=counts[c:c + 1])[0]
                want[c, t] = table[c, perm[at]]
        assert torch.equal(class_batch_indices(table, counts, 11, step, batch), want)
        assert torch.equal(class_batch_indices(table, counts, 11, _t(step), batch, counts.tolist()), want)


@pytest.mark.parametrize("n,batch", [(100, 16), (50, 64), (1000, 64), (37, 5)])
def test_epoch_order_on_device_is_the_host_order(n, batch):
    """The network update's batches from a device batch number, padded with 0, against indices(b) and
    size(b), across epoch ends."""
    e = EpochBatches(n, batch, 4, "net_batches", "cpu")
    for b0 in (0, 3, 6, 7, 40, 101):
        for count in (1, 3, 9, 25):
            idx, sizes = e.on_device(_t(b0), count)
            for j in range(count):
                size = e.size(b0 + j)
                assert int(sizes[j]) == size and torch.equal(idx[j, :size], e.indices(b0 + j))
                assert (idx[j, size:] == 0).all()
    assert e.fewest(2 * batch) == min(len(e.run_until(j, 2 * batch)[0]) for j in range(e.per_epoch))


def test_network_update_draws_on_device_are_the_host_draws():
    """Per batch number: the augmentation rows (one op per batch) and CutMix's decision, box, partners
    and kept ratio, from a device key and a device batch size, against augment_params of the host key,
    cutmix_box and cutmix_partners; both decisions and a ragged batch occur."""
    prefix = rng.key_tensor(rng.key(5, "net_update"))
    strategy = Strategy.parse("color_crop_cutout_flip_scale_rotate")
    seen = set()
    for b in range(120):
        key = rng.key(5, "net_update", b)
        dkey = rng.chain(prefix, _t(b))
        n = 64 if b % 7 else 16
        pos = torch.arange(64)
        assert torch.equal(augment_params(strategy, rng.key_on(dkey, "aug"), pos, 32),
                           augment_params(strategy, rng.key(key, "aug"), pos, 32))
        for h, w in ((32, 32), (28, 28), (30, 24)):
            mk = rng.key(key, "cutmix")
            box = cutmix_box(mk, h, w)
            mask, perm, ratio = cutmix_on_device(rng.key_on(dkey, "cutmix"), _t(n), h, w, 64, torch.float64)
            seen.add((box is None, n))
            if box is None:
                assert not mask.any() and float(ratio) == 1.0
                continue
            (x1, x2, y1, y2), kept = box
            want = torch.zeros(1, 1, h, w, dtype=torch.bool)
            want[:, :, x1:x2, y1:y2] = True
            assert torch.equal(mask, want) and float(ratio) == kept
            assert torch.equal(perm, cutmix_partners(mk, n, "cpu", padded=64))
        # IDC's mix_p 1.0 (ImageNet): every batch mixes, with the same box on the host and the device
        always = cutmix_box(rng.key(key, "cutmix"), 32, 32, 1.0)
        mask, _, ratio = cutmix_on_device(rng.key_on(dkey, "cutmix"), _t(n), 32, 32, 64, torch.float64, 1.0)
        assert always is not None and float(ratio) == always[1] and int(mask.sum()) == \
            (always[0][1] - always[0][0]) * (always[0][3] - always[0][2])
    assert seen == {(True, 64), (False, 64), (True, 16), (False, 16)}


# --- what the host dispatches per inner iteration on the static path ----------------------------------

class _Count(TorchDispatchMode):
    """Counts aten ops dispatched while no Replay's function runs (what the host launches itself)."""

    def __init__(self):
        super().__init__()
        self.outside, self.inside, self.depth = [], 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.depth:
            self.inside += 1
        else:
            self.outside.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def cifar10(real_data_dir):
    require_dataset(real_data_dir, "cifar-10-batches-py")
    return RealData(load_dataset("cifar10", real_data_dir, download=False), "cpu")


@pytest.mark.parametrize("method,over", [("idc", {}), ("udd", dict(policy="response", cfc_weight=0.5))],
                         ids=["idc", "udd-views-cfc"])
def test_static_inner_iteration_dispatches_at_most_16_ops_outside_its_replays(cifar10, monkeypatch, method, over):
    """CIFAR-10's shapes (K=10, 3x32x32, all 50000 training images), --cuda-graphs on (on the CPU: the
    replays run their functions), CutMix on, the last inner iteration (the split step) included: the
    aten ops dispatched outside the replayed functions per inner iteration. Before issue 22 the network
    update's per-batch fill and the matching draws were dispatched by the host: about 3,500 per inner
    iteration at the paper's settings."""
    cfg = build_config("cifar10", 2, "smoke", 32, 32, method=method, form="batched", cuda_graphs="on",
                       compile="off", net_width=8, batch_real=16, n_data=48, inner_loop=3, net_cutmix=True,
                       match_aug="color_crop_cutout", **over)
    proxy = new_proxy(cifar10.info, 0).eval() if method == "udd" else None
    d = Engine(cfg, cifar10, proxy=proxy)
    count = _Count()
    real_call = Replay.__call__

    def counted(self):
        count.depth += 1
        try:
            return real_call(self)
        finally:
            count.depth -= 1
    monkeypatch.setattr(Replay, "__call__", counted)
    with d.precision():
        net, opt = d.start_network(0)
        d.boundary(0)
        if method == "udd":
            assert d.matcher.n_total == 2 * d.syn.n_dec  # region views are in the synthetic batch
        start = d.S.clone()
        loss = 0.0
        with count:
            for inner in range(cfg.match.inner_loop):
                loss = loss + d.inner_iteration(net, opt, 0, inner)
    per_inner = len(count.outside) / cfg.match.inner_loop
    assert per_inner <= 16, count.outside
    assert count.inside > 1000  # the work itself ran, inside the replays
    assert d.pending is not None and torch.equal(d.pending, d.syn.split[1]) and torch.isfinite(loss) and not torch.equal(d.S, start)
    assert d.net_batch == int(d.net_update.counter) == 3 * 3  # 48 images of 16 per inner iteration
