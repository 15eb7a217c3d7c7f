"""Keyed, counter-based random numbers (docs/method.md section 5).

Every random quantity is a pure function of a key built from (seed, outer, inner, class, purpose)
and of its position inside the draw, never of how many draws came before. So the sequential and
the batched loop, a resumed run, and a fused kernel that takes the draws as an input all see the
same numbers, on any device: the hash is plain int64 tensor arithmetic (splitmix64), which gives
bit-identical results on CPU and CUDA.
"""
import zlib

import torch

_MASK64 = (1 << 64) - 1
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_GOLDEN = 0x9E3779B97F4A7C15


def _signed(v: int) -> int:
    v &= _MASK64
    return v - (1 << 64) if v >= (1 << 63) else v


def _mix_int(x: int) -> int:
    x &= _MASK64
    x ^= x >> 30
    x = (x * _M1) & _MASK64
    x ^= x >> 27
    x = (x * _M2) & _MASK64
    x ^= x >> 31
    return x


def _purpose_id(purpose) -> int:
    if isinstance(purpose, str):
        return zlib.crc32(purpose.encode())
    return int(purpose)


def key(seed, *parts) -> int:
    """Fold a seed and parts (ints or purpose strings) into one 64-bit key (as a signed int)."""
    h = _mix_int(int(seed) + _GOLDEN)
    for p in parts:
        h = _mix_int((h ^ (_purpose_id(p) & _MASK64)) + _GOLDEN)
    return _signed(h)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    # logical shift right of int64 bit patterns (torch's >> is arithmetic)
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finalizer on int64 tensors (wrapping multiply)."""
    x = x ^ _shr(x, 30)
    x = x * _signed(_M1)
    x = x ^ _shr(x, 27)
    x = x * _signed(_M2)
    return x ^ _shr(x, 31)


def subkeys(base: int, ids, device=None) -> torch.Tensor:
    """Keys for several streams at once: key(base, id) for each id (e.g. one per class).

    Equal to `key(...)` folded once more with each id, computed on the device.
    """
    ids = torch.as_tensor(ids, dtype=torch.int64, device=device)
    return fold(torch.full_like(ids, _signed(base)), ids)


def fold_int(base: int, i: int) -> int:
    """`fold` on Python ints: key(base, i) as `subkeys` makes it, computed on the host."""
    return _signed(_mix_int(((int(base) & _MASK64) ^ int(i)) + _GOLDEN))


def key_tensor(k: int, device=None) -> torch.Tensor:
    """A [1] int64 tensor holding key k, made on the device by a fill (no copy from host memory)."""
    return torch.full((1,), _signed(k), dtype=torch.int64, device=device)


def uniform_host(k: int, n: int) -> list:
    """`uniform(key_tensor(k), n, torch.float64)[0]` computed on the host, bit for bit: for scalar
    decisions (CutMix's draw) that must not wait on a device."""
    out = []
    for j in range(1, n + 1):
        b = _mix_int(_mix_int(((int(k) & _MASK64) + j * _GOLDEN) & _MASK64))
        out.append((b >> 11) * (2.0 ** -53))
    return out


def fold(keys: torch.Tensor, ids) -> torch.Tensor:
    """Fold ids (non-negative ints or int64 tensors, broadcasting) into keys: the tensor form of one
    `key` step. A Python int id stays a scalar operand, so nothing is copied from host memory."""
    keys = torch.as_tensor(keys, dtype=torch.int64)
    if not isinstance(ids, int):
        ids = torch.as_tensor(ids, dtype=torch.int64, device=keys.device)
    return mix((keys ^ ids) + _signed(_GOLDEN))


def key_on(k, *parts) -> torch.Tensor:
    """`key(k, *parts)` computed on the device, for a k and parts that may be int64 tensors (the loop's
    device counters) as well as ints and purpose strings: bit for bit the same 64-bit key."""
    h = mix(torch.as_tensor(k, dtype=torch.int64) + _signed(_GOLDEN))
    return chain(h, *parts)


def chain(h: torch.Tensor, *parts) -> torch.Tensor:
    """Fold parts into keys that `key` (or `key_on`) made: key(seed, a, b) == chain(key(seed, a), b)."""
    for p in parts:
        h = fold(h, p if isinstance(p, torch.Tensor) else _purpose_id(p))
    return h


def bits(keys: torch.Tensor, n: int) -> torch.Tensor:
    """[*keys.shape, n] int64 random bit patterns: element j of stream k is mix(k + (j+1)*golden)."""
    keys = torch.as_tensor(keys, dtype=torch.int64)
    j = torch.arange(1, n + 1, dtype=torch.int64, device=keys.device)
    return mix(mix(keys.unsqueeze(-1) + j * _signed(_GOLDEN)))


def uniform(keys: torch.Tensor, n: int, dtype=torch.float32) -> torch.Tensor:
    """U[0,1) draws, [*keys.shape, n]. float64 uses 53 bits, anything else 24 bits (exact in fp32)."""
    b = bits(keys, n)
    if dtype == torch.float64:
        return _shr(b, 11).to(torch.float64) * (2.0 ** -53)
    return (_shr(b, 40).to(torch.float32) * (2.0 ** -24)).to(dtype)


def normal(keys: torch.Tensor, n: int, dtype=torch.float32) -> torch.Tensor:
    """Standard normal draws by Box-Muller on two keyed uniform streams."""
    u = uniform(keys, 2 * n, torch.float64)
    u1, u2 = u[..., :n], u[..., n:]
    z = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * torch.pi * u2)
    return z.to(dtype)


def permutation(keys: torch.Tensor, n: int, valid=None) -> torch.Tensor:
    """A random permutation of range(n) per key: [*keys.shape, n] int64.

    With `valid` (int64 tensor broadcasting over keys), row r permutes range(valid[r]) in its first
    valid[r] entries and leaves the padding positions (>= valid[r]) at the end, in order.
    """
    b = _shr(bits(keys, n), 1)  # non-negative 63-bit sort keys; ties have probability ~n^2/2^63
    if valid is not None:
        pos = torch.arange(n, dtype=torch.int64, device=b.device)
        valid = torch.as_tensor(valid, dtype=torch.int64, device=b.device).unsqueeze(-1)
        b = torch.where(pos < valid, b, torch.iinfo(torch.int64).max - n + pos)
    return torch.argsort(b, dim=-1, stable=True)
