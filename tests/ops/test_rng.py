"""Tests for udd_fast.rng (keyed counter-based random numbers) and udd_fast.sampling (keyed batches).

Reference values are computed with independent pure-Python splitmix64 arithmetic mod 2**64;
statistical checks use thresholds derived from the standard error (about 5 sigma), on fixed keys,
so they are deterministic.
"""
import math
import zlib

import pytest
import torch

from udd_fast import rng
from udd_fast.sampling import EpochBatches, class_batch_indices

M64 = 2 ** 64
GOLDEN = 0x9E3779B97F4A7C15


# ----------------------------------------------------------------------------
# Independent pure-Python splitmix64
# ----------------------------------------------------------------------------

def py_mix(z: int) -> int:
    """The splitmix64 finalizer on unsigned 64-bit integers (Steele, Lea, Flood 2014)."""
    z %= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % M64
    return z ^ (z >> 31)


def to_signed(v: int) -> int:
    v %= M64
    return v - M64 if v >= 2 ** 63 else v


def to_unsigned(v: int) -> int:
    return v % M64


def py_key(seed, *parts) -> int:
    """key(): h = mix(seed + golden); for each part: h = mix((h ^ id) + golden); id = crc32 for str."""
    h = py_mix(seed + GOLDEN)
    for p in parts:
        pid = zlib.crc32(p.encode()) if isinstance(p, str) else p % M64
        h = py_mix((h ^ pid) + GOLDEN)
    return to_signed(h)


def py_bits(k: int, j: int) -> int:
    """Element j (0-based) of stream k: mix(mix(k + (j+1)*golden)), unsigned."""
    return py_mix(py_mix(to_unsigned(k) + (j + 1) * GOLDEN))


def chi2_threshold(df: int, sigmas: float = 5.0) -> float:
    """Chi-square critical value by the normal approximation: mean df, sd sqrt(2 df)."""
    return df + sigmas * math.sqrt(2 * df)


# ----------------------------------------------------------------------------
# mix / key / fold / subkeys
# ----------------------------------------------------------------------------

def test_splitmix64_known_vector():
    # splitmix64 seeded with 0: first output is mix(0 + golden) = 0xE220A8397B1DCDAF (reference value
    # of the published algorithm), checks py_mix itself before it is used as the oracle.
    assert py_mix(GOLDEN) == 0xE220A8397B1DCDAF
    out = rng.mix(torch.tensor([to_signed(GOLDEN)], dtype=torch.int64))
    assert to_unsigned(int(out[0])) == 0xE220A8397B1DCDAF


def test_mix_tensor_equals_python_mod_2_64():
    g = torch.Generator().manual_seed(1234)
    # full 64-bit range including negatives, extremes, and small values
    vals = torch.randint(-2 ** 63, 2 ** 63 - 1, (997,), generator=g, dtype=torch.int64)
    extra = torch.tensor([0, 1, -1, 2 ** 63 - 1, -2 ** 63, 12345, -987654321], dtype=torch.int64)
    vals = torch.cat([vals, extra])
    out = rng.mix(vals)
    for v, o in zip(vals.tolist(), out.tolist()):
        assert o == to_signed(py_mix(to_unsigned(v))), f"mix({v})"


def test_key_matches_python_reference():
    cases = [(0,), (1,), (7, 3), (7, 3, 5), (123456789, 2, 99, 4, "class_epoch"), (2 ** 40, "aug"),
             (5, 0, 0, 0, "real")]
    for c in cases:
        assert rng.key(*c) == py_key(*c), c


def test_key_deterministic_and_sensitive_to_each_part():
    base = (11, 2, 3, 4, "purpose")
    k = rng.key(*base)
    assert k == rng.key(*base)
    assert -2 ** 63 <= k < 2 ** 63
    seen = {k}
    for i in range(len(base)):
        for delta in ((1,) if i < 4 else ()):
            parts = list(base)
            parts[i] = parts[i] + delta
            seen.add(rng.key(*parts))
    seen.add(rng.key(11, 2, 3, 4, "purposf"))
    seen.add(rng.key(11, 2, 3, 4))  # fewer parts
    seen.add(rng.key(11, 2, 3, 4, "purpose", 0))  # more parts (a trailing 0 still changes the key)
    seen.add(rng.key(11, 3, 2, 4, "purpose"))  # order matters
    assert len(seen) == 9, "every change of seed/part/order/length must change the key"


def test_subkeys_equal_key_with_one_more_part():
    base = rng.key(42, 3, "class_epoch")
    ids = [0, 1, 2, 9, 17, 1000, 2 ** 31 + 5]
    sk = rng.subkeys(base, ids)
    assert sk.dtype == torch.int64 and sk.shape == (len(ids),)
    for i, idv in enumerate(ids):
        assert int(sk[i]) == rng.key(42, 3, "class_epoch", idv) == py_key(42, 3, "class_epoch", idv)


def test_fold_broadcasts_and_matches_python():
    keys = torch.tensor([rng.key(1), rng.key(2), rng.key(3)], dtype=torch.int64).view(3, 1)
    ids = torch.tensor([0, 4, 7, 11], dtype=torch.int64).view(1, 4)
    out = rng.fold(keys, ids)
    assert out.shape == (3, 4)
    for a in range(3):
        for b in range(4):
            exp = to_signed(py_mix((to_unsigned(int(keys[a, 0])) ^ int(ids[0, b])) + GOLDEN))
            assert int(out[a, b]) == exp


# ----------------------------------------------------------------------------
# bits / uniform: exact values
# ----------------------------------------------------------------------------

def test_bits_and_uniform_exact_values():
    keys = torch.tensor([rng.key(3), rng.key(4, "x"), -1, 0], dtype=torch.int64)
    n = 7
    b = rng.bits(keys, n)
    u64 = rng.uniform(keys, n, torch.float64)
    u32 = rng.uniform(keys, n, torch.float32)
    assert b.shape == (4, n) and u64.dtype == torch.float64 and u32.dtype == torch.float32
    for r in range(4):
        for j in range(n):
            z = py_bits(int(keys[r]), j)
            assert int(b[r, j]) == to_signed(z)
            assert float(u64[r, j]) == (z >> 11) * 2.0 ** -53
            assert float(u32[r, j]) == (z >> 40) * 2.0 ** -24


def test_draws_for_batch_of_keys_equal_one_key_at_a_time():
    keys = rng.subkeys(rng.key(9, "batch"), torch.arange(6)).view(2, 3)
    funcs = [lambda k: rng.bits(k, 11), lambda k: rng.uniform(k, 11), lambda k: rng.uniform(k, 11, torch.float64),
             lambda k: rng.normal(k, 11), lambda k: rng.permutation(k, 11)]
    for f in funcs:
        batched = f(keys)
        assert batched.shape[:2] == (2, 3)
        for a in range(2):
            for c in range(3):
                single = f(keys[a, c].view(1))[0]
                scalar_shape = f(keys[a, c])  # 0-d key
                assert torch.equal(batched[a, c], single)
                assert torch.equal(batched[a, c], scalar_shape)
    # a prefix of a longer draw equals the shorter draw (position-keyed, not stream-keyed)
    assert torch.equal(rng.uniform(keys, 20)[..., :11], rng.uniform(keys, 11))


# ----------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_moments(dtype):
    n = 200_000
    keys = rng.subkeys(rng.key(2024, "unif"), torch.arange(40))
    u = rng.uniform(keys, n // 40, dtype).double().flatten()
    assert u.numel() == n
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    mean, var = float(u.mean()), float(u.var())
    se_mean = math.sqrt(1 / 12 / n)
    se_var = math.sqrt((1 / 80 - 1 / 144) / n)  # Var((U-1/2)^2) = E(U-1/2)^4 - (1/12)^2
    assert abs(mean - 0.5) < 5 * se_mean, mean
    assert abs(var - 1 / 12) < 5 * se_var, var
    # histogram in 50 bins
    counts = torch.bincount((u * 50).long(), minlength=50).double()
    chi2 = float(((counts - n / 50) ** 2 / (n / 50)).sum())
    assert chi2 < chi2_threshold(49), chi2
    # consecutive draws are uncorrelated
    uu = u.view(40, -1)
    corr = float(((uu[:, 1:] - 0.5) * (uu[:, :-1] - 0.5)).mean()) * 12
    assert abs(corr) < 5 / math.sqrt(n), corr



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal_moments(dtype):
    n = 200_000
    keys = rng.subkeys(rng.key(77, "norm"), torch.arange(8))
    z = rng.normal(keys, n // 8, dtype)
    assert z.dtype == dtype and torch.isfinite(z).all()
    z = z.double().flatten()
    mean, var = float(z.mean()), float(z.var())
    assert abs(mean) < 5 / math.sqrt(n), mean
    assert abs(var - 1.0) < 5 * math.sqrt(2 / n), var  # Var(Z^2) = 2
    # tail masses of a standard normal: P(|Z| > 1) = 0.3173, P(|Z| > 2) = 0.0455
    for t, p in ((1.0, 0.31731050786291415), (2.0, 0.04550026389635842)):
        frac = float((z.abs() > t).double().mean())
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n), (t, frac)


# ----------------------------------------------------------------------------
# permutation
# ----------------------------------------------------------------------------

def test_permutation_is_permutation():
    keys = rng.subkeys(rng.key(3, "perm"), torch.arange(25)).view(5, 5)
    for n in (1, 2, 7, 31):
        p = rng.permutation(keys, n)
        assert p.shape == (5, 5, n) and p.dtype == torch.int64
        assert torch.equal(p.sort(dim=-1).values, torch.arange(n).expand(5, 5, n))
    p = rng.permutation(keys, 31).view(25, 31)
    assert len({tuple(r) for r in p.tolist()}) == 25, "different keys should give different permutations"


def test_permutation_valid_padding():
    keys = rng.subkeys(rng.key(3, "permv"), torch.arange(6))
    n = 13
    valid = torch.tensor([13, 0, 1, 5, 12, 7])
    p = rng.permutation(keys, n, valid=valid)
    assert p.shape == (6, n)
    for r in range(6):
        v = int(valid[r])
        assert sorted(p[r, :v].tolist()) == list(range(v)), f"row {r}: first {v} entries permute range({v})"
        assert p[r, v:].tolist() == list(range(v, n)), f"row {r}: padding stays at the end, in order"
    # the full-valid row is the same as without valid
    assert torch.equal(p[0], rng.permutation(keys[0:1], n)[0])
    # scalar valid broadcasts
    p5 = rng.permutation(keys, n, valid=5)
    assert (p5[:, 5:] == torch.arange(5, n)).all()
    assert torch.equal(p5[3], p[3])


def test_permutation_first_position_uniform():
    n, rows = 7, 35_000
    keys = rng.subkeys(rng.key(8, "permfirst"), torch.arange(rows))
    p = rng.permutation(keys, n)
    exp = rows / n
    for pos in (0, n - 1):
        counts = torch.bincount(p[:, pos], minlength=n).double()
        chi2 = float(((counts - exp) ** 2 / exp).sum())
        assert chi2 < chi2_threshold(n - 1), (pos, chi2)
    # with valid=4, the first position is uniform over range(4)
    pv = rng.permutation(keys, n, valid=4)
    counts = torch.bincount(pv[:, 0], minlength=n).double()
    assert counts[4:].sum() == 0
    chi2 = float(((counts[:4] - rows / 4) ** 2 / (rows / 4)).sum())
    assert chi2 < chi2_threshold(3), chi2


# ----------------------------------------------------------------------------
# sampling.class_batch_indices
# ----------------------------------------------------------------------------

def _stream(class_indices, class_counts, seed, steps, batch):
    return torch.cat([class_batch_indices(class_indices, class_counts, seed, s, batch) for s in steps], dim=1)


def test_class_batch_indices_real_mnist_epochs(mnist_data):
    ci, cc = mnist_data.class_indices, mnist_data.class_counts
    k = ci.shape[0]
    labels = mnist_data.labels
    batch, seed = 64, 3
    counts = cc.tolist()
    # The stream is cut in big batches to keep the test fast (one call costs the same at any batch
    # size); the batch-64 cut is checked to be the same stream below.
    big = 10 * batch
    n_steps = math.ceil(max(counts) / big) + 1  # one and a bit epochs of the largest class
    stream = _stream(ci, cc, seed, range(n_steps), big)  # [K, n_steps*big]
    assert torch.equal(stream[:, :big], _stream(ci, cc, seed, range(10), batch)), \
        "batch-64 steps must be consecutive slices of the same per-class stream"
    assert int(stream.min()) >= 0, "padding (-1) must never be returned"
    # every index has the right class
    assert torch.equal(labels[stream], torch.arange(k).view(k, 1).expand_as(stream))
    for c in range(k):
        n_c = counts[c]
        own = set(ci[c, :n_c].tolist())
        # the first floor(n_c / B) batches of 64 have no repeats
        full = (n_c // batch) * batch
        assert len(set(stream[c, :full].tolist())) == full, f"class {c}: repeats within an epoch"
        # the first n_c stream positions are a permutation of the class's indices
        first = stream[c, :n_c].tolist()
        assert sorted(first) == sorted(own), f"class {c}: first epoch is not a permutation"
        # the next epoch starts over (its first elements are distinct and differ in order)
        nxt = stream[c, n_c:n_c + batch].tolist()
        assert len(nxt) == batch and len(set(nxt)) == len(nxt)
        assert nxt != first[:len(nxt)], f"class {c}: second epoch repeats the first epoch's order"
    # the order is shuffled (not dataset order)
    assert stream[0, :batch].tolist() != ci[0, :batch].tolist()


def test_class_batch_indices_pure_function_of_seed_and_step(mnist_data):
    ci, cc = mnist_data.class_indices, mnist_data.class_counts
    a5 = class_batch_indices(ci, cc, 11, 5, 64)
    a3 = class_batch_indices(ci, cc, 11, 3, 64)
    b3 = class_batch_indices(ci, cc, 11, 3, 64)
    b5 = class_batch_indices(ci, cc, 11, 5, 64)
    assert torch.equal(a5, b5) and torch.equal(a3, b3)
    assert not torch.equal(a3, a5)
    other = class_batch_indices(ci, cc, 12, 3, 64)
    assert (other != a3).float().mean() > 0.9, "different seeds should give different batches"
    # a step far into the stream (several epochs in) is still well formed
    far = class_batch_indices(ci, cc, 11, 1000, 64)
    assert torch.equal(mnist_data.labels[far], torch.arange(ci.shape[0]).view(-1, 1).expand_as(far))
    # the stream is the same whatever batch size cuts it
    s16 = _stream(ci, cc, 11, range(4), 16)
    s64 = _stream(ci, cc, 11, range(1), 64)
    assert torch.equal(s16, s64)


def test_class_batch_indices_small_counts_wrap_inside_batch():
    # classes with 3, 5, 1 and 4 images, padded with -1; dataset indices arbitrary
    table = torch.tensor([[10, 11, 12, -1, -1],
                          [20, 21, 22, 23, 24],
                          [30, -1, -1, -1, -1],
                          [40, 41, 42, 43, -1]])
    counts = torch.tensor([3, 5, 1, 4])
    batch = 8
    stream = _stream(table, counts, 5, range(6), batch)  # 48 positions
    assert int(stream.min()) >= 0
    for c in range(4):
        n_c = int(counts[c])
        own = sorted(table[c, :n_c].tolist())
        row = stream[c].tolist()
        assert all(v in own for v in row)
        orders = set()
        for e in range(len(row) // n_c):
            ep = row[e * n_c:(e + 1) * n_c]
            assert sorted(ep) == own, f"class {c} epoch {e}: not a permutation: {ep}"
            orders.add(tuple(ep))
        if n_c >= 3:
            assert len(orders) > 1, f"class {c}: every epoch has the same order"
    # a single batch that wraps several epochs equals the concatenated stream
    big = class_batch_indices(table, counts, 5, 0, 48)
    assert torch.equal(big, stream)


# ----------------------------------------------------------------------------
# sampling.EpochBatches
# ----------------------------------------------------------------------------

def test_epoch_batches_partition():
    n, batch = 103, 10
    eb = EpochBatches(n, batch, seed=4, purpose="net", device="cpu")
    assert eb.per_epoch == 11
    for epoch in range(3):
        parts = [eb.indices(epoch * 11 + j) for j in range(11)]
        sizes = [p.numel() for p in parts]
        assert sizes == [10] * 10 + [3]
        allidx = torch.cat(parts)
        assert sorted(allidx.tolist()) == list(range(n)), f"epoch {epoch} is not a partition"
    e0 = torch.cat([eb.indices(j) for j in range(11)])
    e1 = torch.cat([eb.indices(11 + j) for j in range(11)])
    assert not torch.equal(e0, e1), "epochs should be reshuffled"
    assert not torch.equal(e0, torch.arange(n)), "epoch should be shuffled"
    # stateless apart from the cache: out-of-order access and a fresh object give the same batches
    fresh = EpochBatches(n, batch, seed=4, purpose="net", device="cpu")
    for b in (25, 3, 14, 3, 0, 21, 12):
        assert torch.equal(fresh.indices(b), eb.indices(b))
    other = EpochBatches(n, batch, seed=4, purpose="eval", device="cpu")
    assert not torch.equal(torch.cat([other.indices(j) for j in range(11)]), e0)


def test_epoch_batches_run_until_counts_actual_sizes():
    eb = EpochBatches(103, 10, seed=0, purpose="net", device="cpu")  # sizes per epoch: 10 x 10, then 3
    # 8 (10) + 9 (10) + 10 (3) = 23 < 25, + 11 (10) = 33
    assert eb.run_until(8, 25) == ([8, 9, 10, 11], 12)
    assert eb.run_until(8, 23) == ([8, 9, 10], 11)
    assert eb.run_until(10, 3) == ([10], 11)
    assert eb.run_until(10, 4) == ([10, 11], 12)
    assert eb.run_until(0, 0) == ([], 0)
    # independent count over many batches
    b, total_needed = 5, 500
    nums, nb = eb.run_until(b, total_needed)
    sizes = [eb.indices(x).numel() for x in nums]
    assert sum(sizes) >= total_needed and sum(sizes[:-1]) < total_needed
    assert nums == list(range(b, nb))
    # exact-multiple data set: every batch full
    eb2 = EpochBatches(40, 8, seed=0, purpose="x", device="cpu")
    assert eb2.run_until(3, 500) == (list(range(3, 3 + 63)), 66)
