"""--precision: bf16 autocast of the network passes keeps the matching gradient close to fp32's;
fp32 switches TF32 off; a bf16 smoke run ends with finite images."""
import pytest
import torch
import torch.nn.functional as F

from udd_fast.config import build_config
from udd_fast.distill import main as distill_main
from udd_fast.engine import Engine


def _grad(data, precision, seed):
    cfg = build_config("mnist", 1, "smoke", 28, 28, precision=precision, seed=seed, device=str(data.device),
                       form="batched")
    d = Engine(cfg, data)
    loss, grad = d.batched_grad(d.new_network(0), 0, 0)
    assert grad.dtype == torch.float32 and d.S.dtype == torch.float32  # images and gradient stay float32
    return loss, grad


def test_bf16_matching_gradient_agrees_with_fp32(mnist_dev):
    """Real MNIST, one class batch per class (smoke: 16 real images, IPC 1 x 4 formations), the engine's
    ConvNet-3 (width 128), l1 matching. Measured on CPU for seeds 0-2: per class cosine >= 0.997 and
    relative L2 error <= 0.077; over all classes cosine >= 0.998, relative L2 <= 0.057; per-class loss
    within 0.7 %. Tolerances with margin: per class cosine > 0.99 and relative L2 < 0.15, over all
    cosine > 0.995 and relative L2 < 0.1, loss within 3 %."""
    for seed in (0, 1):
        l32, g32 = _grad(mnist_dev, "fp32", seed)
        l16, g16 = _grad(mnist_dev, "bf16", seed)
        assert not torch.equal(g32, g16)  # autocast really ran in bf16
        a, b = g32.flatten(1), g16.flatten(1)
        cos = F.cosine_similarity(a, b, 1)
        rel = (a - b).norm(dim=1) / a.norm(dim=1)
        assert cos.min() > 0.99 and rel.max() < 0.15, (cos, rel)
        assert F.cosine_similarity(a.flatten(), b.flatten(), 0) > 0.995
        assert (a - b).norm() / a.norm() < 0.1
        assert ((l32 - l16).abs() / l32).max() < 0.03


def test_precision_is_a_context_the_run_enters(mnist_data):
    """fp32 switches TF32 off and tf32 allows it, inside the run only: constructing a Engine changes
    nothing, and leaving the context restores whatever was set before."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for outside in (True, False):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = outside
            for precision, inside in (("fp32", False), ("tf32", True), ("bf16", True)):
                d = Engine(build_config("mnist", 1, "smoke", 28, 28, precision=precision), mnist_data)
                assert torch.backends.cuda.matmul.allow_tf32 is outside  # the constructor leaks nothing
                with d.precision():
                    assert torch.backends.cuda.matmul.allow_tf32 is inside
                    assert torch.backends.cudnn.allow_tf32 is inside
                assert torch.backends.cuda.matmul.allow_tf32 is outside and torch.backends.cudnn.allow_tf32 is outside
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert build_config("mnist", 1, "smoke", 28, 28).match.precision == "fp32"  # the CPU default
    assert build_config("mnist", 1, "smoke", 28, 28, device="cuda").match.precision == "tf32"


@pytest.mark.integration
def test_bf16_smoke_run_gives_finite_images(tmp_path, real_data_dir, device):
    out = tmp_path / "run"
    rc = distill_main(["--dataset", "mnist", "--preset", "smoke", "--precision", "bf16", "--iterations", "1",
                       "--eval-runs", "0", "--data-dir", str(real_data_dir), "--out", str(out), "--no-progress",
                       "--no-download", "--device", device])
    assert rc == 0
    saved = torch.load(out / "distilled.pt", weights_only=True)
    assert saved["config"]["precision"] == "bf16"
    assert saved["images"].dtype == torch.float32 and torch.isfinite(saved["images"]).all()
