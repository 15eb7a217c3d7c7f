"""IDC's own functions vs udd_fast.compat (the drop-in) on the same inputs, at CIFAR-10 shapes:

    UDD_FAST_BENCH_THREADS=1 python -m pytest bench/test_bench_compat.py --benchmark-only

- decode: one class at IPC 10, factor 2 (10 stored -> 40), forward and forward+backward;
- DiffAug batch=True (siamese) 'color_crop_cutout' on the 64 real + 40 synthetic matching batch,
  forward and forward+backward;
- DiffAug per-sample 'color_crop' on a network-update batch of 64, forward;
- matchloss ('grad', mse, conv weights) + backward to the synthetic images on ConvNet-3 (width 128),
  64 real and 40 synthetic images of one class.

IDC's functions are loaded at run time from IDC's code (env UDD_FAST_IDC_SRC, by tests/idc_code.py);
those cases skip, naming the variable, when it is absent. compat runs on udd_fast.ops' current backend."""
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import C, FACTOR, SIZE, sync  # noqa: E402
from idc_code import load_idc_functions, make_idc_synth, require_idc_src  # noqa: E402
from udd_fast import compat, ops  # noqa: E402
from udd_fast.models import ConvNet  # noqa: E402

IPC, BATCH_REAL, BATCH_NET = 10, 64, 64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPLS = ["idc", "compat"]


@pytest.fixture(scope="module")
def idc():
    return load_idc_functions(require_idc_src())


def _impl(idc, impl):
    """The functions of one side: IDC's or compat's, with the same call shapes."""
    if impl == "compat":
        return compat.DiffAug, compat.decode_zoom, compat.matchloss
    synth = make_idc_synth((SIZE, SIZE))
    return idc.DiffAug, (lambda img, target, factor: idc.decode_zoom(synth, img, target, factor)), idc.matchloss


def _run(benchmark, impl, group, fn, rounds=20):
    def timed():
        out = fn()
        sync(DEVICE)
        return out

    benchmark.group = group
    benchmark.extra_info.update(impl=impl, device=DEVICE,
                                backend=ops.resolve(torch.zeros(1, device=DEVICE)) if impl == "compat" else "-")
    with warnings.catch_warnings():  # IDC's code triggers torch's meshgrid/affine_grid default warnings
        warnings.simplefilter("ignore", UserWarning)
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)


def _images(n, seed, grad=False):
    x = torch.rand(n, C, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    return x.requires_grad_(grad)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_decode_class_ipc10(benchmark, idc, impl, backward):
    _, decode_zoom, _ = _impl(idc, impl)
    img = _images(IPC, 0, grad=backward)
    target = torch.zeros(IPC, dtype=torch.long, device=DEVICE)

    def fn():
        img.grad = None
        data, _ = decode_zoom(img, target, FACTOR)
        if backward:
            data.sum().backward()
        return data

    _run(benchmark, impl, f"decode IPC10 10->40 {'fwd+bwd' if backward else 'fwd'}", fn)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_diffaug_siamese(benchmark, idc, impl, backward):
    DiffAug, _, _ = _impl(idc, impl)
    aug = DiffAug("color_crop_cutout", batch=True)
    x = _images(BATCH_REAL + FACTOR ** 2 * IPC, 1, grad=backward)

    def fn():
        x.grad = None
        out = aug(x)
        if backward:
            out.sum().backward()
        return out

    _run(benchmark, impl, f"DiffAug batch=True color_crop_cutout N=104 {'fwd+bwd' if backward else 'fwd'}", fn)


@pytest.mark.parametrize("impl", IMPLS)
def test_diffaug_per_sample(benchmark, idc, impl):
    DiffAug, _, _ = _impl(idc, impl)
    aug = DiffAug("color_crop", batch=False)
    x = _images(BATCH_NET, 2)
    _run(benchmark, impl, "DiffAug per-sample color_crop N=64 fwd", lambda: aug(x))


@pytest.mark.parametrize("impl", IMPLS)
def test_matchloss_backward(benchmark, idc, impl):
    _, _, matchloss = _impl(idc, impl)
    torch.manual_seed(0)
    model = ConvNet(10, C, SIZE, width=128).to(DEVICE)
    args = types.SimpleNamespace(match="grad", metric="mse", bias=False, fc=False)
    img_real = _images(BATCH_REAL, 3)
    img_syn = _images(FACTOR ** 2 * IPC, 4, grad=True)
    lab_real = torch.zeros(BATCH_REAL, dtype=torch.long, device=DEVICE)
    lab_syn = torch.zeros(FACTOR ** 2 * IPC, dtype=torch.long, device=DEVICE)

    def fn():
        img_syn.grad = None
        loss = matchloss(args, img_real, img_syn, lab_real, lab_syn, model)
        loss.backward()
        return loss

    _run(benchmark, impl, "matchloss+backward ConvNet-3 64 real + 40 syn", fn, rounds=9)
