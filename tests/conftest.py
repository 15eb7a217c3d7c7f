import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("UDD_FAST_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory) -> Path:
    """A data dir holding the real MNIST, FashionMNIST (linked from shared/data) and CIFAR-10
    (written once into <repo>/.data by shared/data/make_cifar10.py), each where the shared data has
    it (a GPU machine gets MNIST alone: bench/gpu_session.py); tests of a dataset that is not there
    skip through require_dataset."""
    shared = shared_data_dir()
    cache = REPO / ".data"
    if (shared / "make_cifar10.py").is_file() and not (cache / "cifar-10-batches-py" / "test_batch").exists():
        subprocess.run([sys.executable, str(shared / "make_cifar10.py"), str(cache)], check=True)
    root = tmp_path_factory.mktemp("realdata")
    for name in ("MNIST", "FashionMNIST"):
        if (shared / name).is_dir():
            (root / name).symlink_to(shared / name)
    if (cache / "cifar-10-batches-py").is_dir():
        (root / "cifar-10-batches-py").symlink_to(cache / "cifar-10-batches-py")
    return root


def require_dataset(data_dir: Path, folder: str):
    """Skip, naming what is missing, when the shared data lacks a dataset (CI has them all)."""
    if not (Path(data_dir) / folder).exists():
        pytest.skip(f"{folder} is not in the shared data at {shared_data_dir()} (env UDD_FAST_SHARED_DATA)")


@pytest.fixture(scope="session")
def mnist_arrays(real_data_dir):
    from udd_fast.data import load_dataset

    require_dataset(real_data_dir, "MNIST")
    return load_dataset("mnist", real_data_dir, download=False)


@pytest.fixture(scope="session")
def mnist_data(mnist_arrays):
    from udd_fast.data import RealData

    return RealData(mnist_arrays, "cpu")


# --- the devices engine-level tests run on ----------------------------------------------------------
# Reproducibility, as the README states it: bitwise on the CPU for the same build and thread count;
# on CUDA within a stated tolerance (atomics in the backward passes and cuDNN's algorithm choice
# reorder float sums from run to run).
DEVICES = ("cpu", "cuda")


@pytest.fixture(params=DEVICES)
def device(request):
    """Each device in turn; CUDA is skipped, with the reason, where there is none."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here (engine tests run on CUDA on a GPU machine: bench/gpu_session.py)")
    return request.param


_on_device = {}


@pytest.fixture
def mnist_dev(mnist_data, mnist_arrays, device):
    """Real MNIST on the device under test (one copy per device for the session)."""
    from udd_fast.data import RealData

    if device == "cpu":
        return mnist_data
    if device not in _on_device:
        _on_device[device] = RealData(mnist_arrays, device)
    return _on_device[device]


def run_scale(events):
    """The largest pixel magnitude a traced run reaches (events of Engine's trace)."""
    return max(float(e[4].abs().max()) for e in events)


def close_at_run_scale(a, b, scale):
    """Equal up to float64 round-off relative to the run's largest value: the batched and sequential
    forms sum the same terms in another order (and on CUDA atomics reorder them), and an error made
    at |S| ~ 1e2 between clamps survives the clamp. Measured on the CPU: at most 1.4e-13 at a
    boundary, 1.0e-12 at a gradient point, <= 5e-15 of the run's scale. A wrong step (momentum, step
    size, the clamp split) moves pixels by lr * grad, many orders above this."""
    return torch.allclose(a, b, rtol=0, atol=1e-13 * scale)


def assert_same_run(a, b, device, cuda_tol):
    """Two runs of the same computation: bitwise equal on the CPU (same thread count and build),
    within cuda_tol (max abs difference) on CUDA."""
    if device == "cpu":
        assert torch.equal(a, b), f"max difference {float((a - b).abs().max()):.3g}"
    else:
        diff = float((a.double() - b.double()).abs().max())
        assert diff <= cuda_tol, f"max difference {diff:.3g} > {cuda_tol:.3g} on {device}"


# --- udd_fast.ops backends (tests/test_ops_*.py, tests/test_backends.py) -------------------------
import torch  # noqa: E402

if not torch.cuda.is_available():
    # No GPU: the Triton kernels run on CPU tensors in Triton's interpreter. Set before anything
    # imports triton (its jit decorator reads it); an explicit TRITON_INTERPRET is kept.
    os.environ.setdefault("TRITON_INTERPRET", "1")

OPS_BACKENDS = ("torch", "cpp", pytest.param("triton", marks=pytest.mark.triton), "cuda")


def ops_device(backend: str) -> torch.device:
    """Where a backend's tests run: the GPU when there is one, except for the CPU-only C++ backend."""
    return torch.device("cuda" if torch.cuda.is_available() and backend != "cpp" else "cpu")


@pytest.fixture(params=OPS_BACKENDS)
def ops_backend(request):
    """Each udd_fast.ops backend in turn (skipped, with the reason, when not live here)."""
    from udd_fast import ops

    live, why = ops.available_backends(reasons=True)[request.param]
    if not live:
        pytest.skip(f"backend {request.param!r} is not live here: {why}")
    with ops.use_backend(request.param):
        yield request.param


@pytest.fixture
def fresh_backends(monkeypatch):
    """udd_fast.ops's backends as if none had been imported yet, for a test that simulates a failed
    import; the records of the session come back after it. The one way a test touches that state."""
    from udd_fast.ops import backend

    monkeypatch.setattr(backend, "_records", {name: backend.Record() for name in backend._REAL})
    return backend


# What .ci/run installs in its second step, and the marker that selects the tests needing it there: a
# test skipped for want of one must carry its marker, or CI would never run it.
NEEDS = {"triton": "triton", "browser": "browser"}  # marker: word in the skip reason


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and call.excinfo is not None:
        reason = str(call.excinfo.value).lower()
        for marker, word in NEEDS.items():
            if word in reason and item.get_closest_marker(marker) is None:
                report.outcome = "failed"
                report.longrepr = (f"{item.nodeid} skipped for want of {marker} ({call.excinfo.value}) but is not "
                                   f"marked @pytest.mark.{marker}: .ci/run's step with {marker} would never run it")
    return report


def pytest_terminal_summary(terminalreporter):
    """Say which udd_fast.ops backends the op tests could run, and why the others could not."""
    if "udd_fast.ops" not in sys.modules:
        return
    ops = sys.modules["udd_fast.ops"]
    terminalreporter.section("udd_fast.ops backends")
    for name, (live, why) in ops.available_backends(reasons=True).items():
        terminalreporter.write_line(f"{name:7s} {'live' if live else 'missing'}: {why}")
