"""pytest-benchmark setup for bench/: `pytest bench/ --benchmark-only` (see bench/RESULTS.md)."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(REPO))

import os  # noqa: E402

import torch  # noqa: E402

# Pin the intra-op threads (torch and the C++ extension share them) when the machine is shared:
# OpenMP threads spinning against another process's work distort CPU timings badly.
if os.environ.get("UDD_FAST_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["UDD_FAST_BENCH_THREADS"]))


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
