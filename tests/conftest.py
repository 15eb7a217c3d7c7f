"""The tests' fixtures and hooks; the plain functions they share are in helpers.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # No GPU: the Triton kernels run on CPU tensors in Triton's interpreter. Set before anything
    # imports triton (its jit decorator reads it); an explicit TRITON_INTERPRET is kept.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import DEVICES, OPS_BACKENDS, REPO, require_dataset, shared_data_dir  # noqa: E402


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


@pytest.fixture(scope="session")
def mnist_arrays(real_data_dir):
    from udd_fast.data import load_dataset

    require_dataset(real_data_dir, "MNIST")
    return load_dataset("mnist", real_data_dir, download=False)


@pytest.fixture(scope="session")
def cifar_arrays(real_data_dir):
    from udd_fast.data import load_dataset

    require_dataset(real_data_dir, "cifar-10-batches-py")
    return load_dataset("cifar10", real_data_dir, download=False)


@pytest.fixture(scope="session")
def mnist_data(mnist_arrays):
    from udd_fast.data import RealData

    return RealData(mnist_arrays, "cpu")


@pytest.fixture(params=[d if d == "cpu" else pytest.param(d, marks=pytest.mark.gpu) for d in DEVICES])
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


# --- udd_fast.ops backends (tests/ops/) -----------------------------------------------------------------
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
# The same holds for what no CI step has (a GPU, IDC's code): their tests are selected by marker where
# they are (bench/gpu_session.py runs -m gpu on a GPU machine).
NEEDS = {"triton": "triton", "browser": "browser", "gpu": "cuda device", "idc": "idc's code"}  # marker: words in the skip reason


def pytest_collection_modifyitems(items):
    """A test that reads IDC's own code (through the idc_src fixture, tests/engine/test_compat.py) is
    marked idc."""
    for item in items:
        if "idc_src" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.idc)


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
