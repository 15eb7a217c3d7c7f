"""Issue 22's fused updates: the network's SGD step (`sgd_`) and the image momentum steps of
SyntheticSet take at most 4 kernels for all their tensors, and compute what they computed before:
`sgd_` what torch.optim.SGD computes, the image steps bitwise what IDC's formulas compute."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from udd_fast.engine.network_update import sgd_
from udd_fast.engine.synthetic import SyntheticSet
from udd_fast.models import ConvNet


class Kernels(TorchDispatchMode):
    """The aten calls one block dispatches, by name: a `_foreach_*` call is one (one fused kernel per
    dtype and device on CUDA); views, detach, alias and empty tensors launch nothing and are left out."""

    def __enter__(self):
        self.names = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or func._schema.name.startswith("aten::empty")):
            self.names.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def _convnet_params(device, dtype):
    """A ConvNet's 14 parameters (3 conv+norm blocks, the classifier)."""
    return [p.detach().to(device, dtype) for p in ConvNet(10, 3, 32, width=16).parameters()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("wd", [0.0, 5e-4])
@pytest.mark.parametrize("foreach", [False, True], ids=["sgd-loop", "sgd-foreach"])
def test_sgd_equals_torch_sgd(device, dtype, wd, foreach):
    """5 steps on random gradients: the parameters and the momentum buffers of sgd_ (zero buffers at
    the start) equal torch.optim.SGD's (either of its implementations), within a few units of round-off
    at the tensor's scale; bitwise on the CPU."""
    torch.manual_seed(0)
    lr, mom = 0.05, 0.9
    ours = _convnet_params(device, dtype)
    theirs = [p.clone().requires_grad_(True) for p in ours]
    momentum = [torch.zeros_like(p) for p in ours]
    start = [p.clone() for p in ours]
    opt = torch.optim.SGD(theirs, lr=lr, momentum=mom, weight_decay=wd, foreach=foreach)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ours]
        sgd_(ours, grads, momentum, lr, mom, wd)
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        opt.step()
    eps = torch.finfo(dtype).eps
    for p, q, buf, p0 in zip(ours, theirs, momentum, start, strict=True):
        want_buf = opt.state[q]["momentum_buffer"]
        for a, b in ((p, q.detach()), (buf, want_buf)):
            if device == "cpu":
                assert torch.equal(a, b)
            else:
                diff = float((a - b).abs().max())
                assert diff <= 4 * eps * max(1.0, float(b.abs().max())), diff
        assert not torch.equal(p, p0)  # the steps moved it


def test_sgd_first_step_is_torchs_clone_of_the_gradient():
    """A zero buffer gives torch's first step: the buffer becomes the decayed gradient itself (torch
    clones it), the parameter moves by -lr times it; bitwise."""
    torch.manual_seed(1)
    p, g = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    p0, buf = p.clone(), torch.zeros_like(p)
    sgd_([p], [g], [buf], 0.1, 0.9, 1e-3)
    assert torch.equal(buf, g.add(p0, alpha=1e-3))
    assert torch.equal(p, p0.add(buf, alpha=-0.1))


@pytest.mark.parametrize("wd", [0.0, 5e-4])
def test_sgd_takes_at_most_4_kernels(device, wd):
    """One call over the ConvNet's 14 parameters: at most 4 foreach calls (4 with weight decay, 3
    without; the loop it replaced took 4 and 3 per parameter: 56 and 42)."""
    params = _convnet_params(device, torch.float32)
    grads = [torch.randn_like(p) for p in params]
    momentum = [torch.zeros_like(p) for p in params]
    with Kernels() as k:
        sgd_(params, grads, momentum, 0.05, 0.9, wd)
    assert len(k.names) <= 4 and all(n.startswith("_foreach_") for n in k.names), k.names


def _bits(t):
    return t.view(torch.int64 if t.dtype == torch.float64 else torch.int32)


@pytest.mark.parametrize("flag", [False, True], ids=["host-last", "device-last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("classes", [(0, 10), (3, 7)], ids=["all-classes", "one-rank-of-several"])
def test_image_steps_equal_the_plain_formulas(device, dtype, classes, flag):
    """2 outer iterations of 3 inner ones, steps then clamp and the split step's remainder, against the
    formulas written out (docs/method.md section 4): S, the momentum and `pending` bitwise equal, the
    other ranks' rows of `pending` zero; `last` known on the host, or a device flag (the static inner
    iteration's, which makes the remainder `pending` itself after the last). Then the per-class step,
    against IDC's."""
    torch.manual_seed(2)
    K, ipc, mom, lr = 10, 2, 0.5, 30.0
    syn = SyntheticSet(torch.rand(K * ipc, 3, 8, 8, dtype=dtype, device=device), K, ipc, 2, mom, lr, classes)
    S, buf = syn.S.clone(), syn.buf.clone()
    rows = slice(classes[0] * ipc, classes[1] * ipc)
    L = (1 - mom ** K) / (1 - mom)
    w = torch.tensor([(1 - mom ** (K - c)) / (1 - mom) for c in range(*classes)], dtype=dtype,
                     device=device).repeat_interleave(ipc).view(-1, 1, 1, 1)
    for outer in range(2):
        for inner in range(3):
            grad = torch.randn_like(S) * 1e-2
            last = inner == 2
            if flag:
                syn.step_classes(grad, torch.tensor(inner, device=device) == 2)
                if last:
                    syn.pending = syn.split[1]
            else:
                syn.step_classes(grad, last)
            b = buf[rows]
            b.mul_(mom ** K).add_(grad[rows])
            if last:
                S[rows] -= (lr * w) * b
                pending = torch.zeros_like(S)
                pending[rows] = (lr * (L - w)) * b
            else:
                S[rows] -= lr * L * b
            assert torch.equal(_bits(syn.S), _bits(S)) and torch.equal(_bits(syn.buf), _bits(buf))
        assert torch.equal(_bits(syn.pending), _bits(pending))
        syn.clamp()
        syn.finish_split_step()
        S.clamp_(0.0, 1.0).sub_(pending)
        assert torch.equal(_bits(syn.S), _bits(S)) and syn.pending is None
    assert not torch.equal(syn.buf[rows], torch.zeros_like(syn.buf[rows]))
    for _ in range(2):
        grad = torch.randn_like(S) * 1e-2
        syn.step_class(grad)
        buf.mul_(mom).add_(grad)
        S = S - lr * buf
        assert torch.equal(_bits(syn.S), _bits(S)) and torch.equal(_bits(syn.buf), _bits(buf))


def test_image_steps_take_at_most_4_kernels(device):
    """Each image step: the momentum's 2 kernels and the image's 2. The split step (last=True) writes its
    remainder into a buffer allocated at its first call (one fill more, that once); it took 7 before
    (a zeroed remainder, a product and a copy into its rows)."""
    syn = SyntheticSet(torch.rand(20, 3, 8, 8, device=device), 10, 2, 2, 0.5, 30.0, (3, 7))
    grad = torch.randn_like(syn.S)
    flag = torch.ones((), dtype=torch.bool, device=device)
    counts = {}
    for name, step in (("class", lambda: syn.step_class(grad)), ("classes", lambda: syn.step_classes(grad, False)),
                       ("split first", lambda: syn.step_classes(grad, True)),
                       ("split", lambda: syn.step_classes(grad, True)),
                       ("flagged", lambda: syn.step_classes(grad, flag))):
        with Kernels() as k:
            step()
        counts[name] = k.names
    assert all(len(counts[name]) <= 4 for name in ("class", "classes", "split")), counts
    # a device flag for `last` (a captured inner iteration) costs one where() to pick the coefficients
    assert sorted(counts["flagged"]) == sorted(counts["split"] + ["where"]), counts
    assert sorted(counts["split first"]) == sorted(counts["split"] + ["zeros"])
