"""What the tests share: where the repository and the real data are, the devices and backends a test
runs on, the equalities the engine's tests assert, small files in the official dataset formats, and
the check of a drawn grid.png. Plain functions (the fixtures are in conftest.py); a test module
imports these, never another test module."""
import gzip
import io
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from udd_fast import pictures
from udd_fast.decode import decode_all

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("UDD_FAST_SHARED_DATA", REPO.parent / "shared" / "data"))


def require_dataset(data_dir: Path, folder: str):
    """Skip, naming what is missing, when the shared data lacks a dataset (CI has them all)."""
    if not (Path(data_dir) / folder).exists():
        pytest.skip(f"{folder} is not in the shared data at {shared_data_dir()} (env UDD_FAST_SHARED_DATA)")


# --- the devices engine-level tests run on ----------------------------------------------------------
# Reproducibility, as the README states it: bitwise on the CPU for the same build and thread count;
# on CUDA within a stated tolerance (atomics in the backward passes and cuDNN's algorithm choice
# reorder float sums from run to run).
DEVICES = ("cpu", "cuda")


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


def interrupt_after_a_checkpoint(cmd, out: Path, env: dict, timeout: float, cwd=None):
    """Start `cmd` (a run writing into `out`), send it SIGINT once out/checkpoint.pt exists, and return
    (its exit status, its stderr); the process is killed if it outlives the test."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + timeout
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


# -- udd_fast.ops backends ---------------------------------------------------------------------------
OPS_BACKENDS = ("torch", "cpp", pytest.param("triton", marks=pytest.mark.triton),
                pytest.param("cuda", marks=pytest.mark.gpu))
# the dtypes besides float32 every op is checked in: half precision on a GPU only
OTHER_DTYPES = [torch.float64, pytest.param(torch.float16, marks=pytest.mark.gpu),
                pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]


def ops_device(backend: str) -> torch.device:
    """Where a backend's tests run: the GPU when there is one, except for the CPU-only C++ backend."""
    return torch.device("cuda" if torch.cuda.is_available() and backend != "cpp" else "cpu")


def dtype_device(backend: str, dtype) -> torch.device:
    """Where an op test of `backend` runs in `dtype` (OTHER_DTYPES); skips, saying why, a dtype the
    backend does not take here: half precision off a GPU, anything but float32/float64 in C++."""
    device = ops_device(backend)
    if dtype not in (torch.float32, torch.float64) and device.type != "cuda":
        pytest.skip(f"{dtype} is checked on a GPU only (no CUDA device here)")
    if backend == "cpp" and dtype not in (torch.float32, torch.float64):
        pytest.skip("the C++ backend is float32/float64")
    return device


# -- small files in the official dataset formats ------------------------------------------------------
def idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x0800 + arr.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_tiny_mnist(raw: Path, n_train=20, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    raw.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        payload = idx_bytes(arr)
        if gz:
            (raw / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (raw / stem).write_bytes(payload)
    return arrays


def cifar_batch(images, labels, label_key="labels", as_bytes=False):
    d = {"batch_label": "tiny", label_key: [int(v) for v in labels],
         "data": images.reshape(len(images), -1), "filenames": [f"{i}.png" for i in range(len(images))]}
    if label_key == "fine_labels":
        d["coarse_labels"] = [int(v) // 5 for v in labels]
    return {k.encode(): v for k, v in d.items()} if as_bytes else d


def dump(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_tiny_cifar10(root: Path, batch_bytes=False, meta_bytes=True, per_batch=20):
    """Tiny CIFAR-10 (labels i % 10); returns the train images in file order."""
    folder = root / "cifar-10-batches-py"
    rng = np.random.default_rng(1)
    all_images = []
    for k in range(1, 6):
        imgs = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        all_images.append(imgs)
        dump(folder / f"data_batch_{k}", cifar_batch(imgs, np.arange(per_batch) % 10, as_bytes=batch_bytes))
    test = rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    dump(folder / "test_batch", cifar_batch(test, np.arange(10)[::-1], as_bytes=batch_bytes))
    names = [f"class{i}" for i in range(10)]
    meta = {b"label_names": [n.encode() for n in names], b"num_vis": 3072} if meta_bytes else \
        {"label_names": names, "num_vis": 3072}
    dump(folder / "batches.meta", meta)
    return np.concatenate(all_images), test


# -- grid.png ---------------------------------------------------------------------------------------------
def png_pixels(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def upscaled(img: torch.Tensor, s: int) -> np.ndarray:
    a = (img.float().clamp(0, 1) * 255).round().to(torch.uint8).repeat_interleave(s, 1).repeat_interleave(s, 2)
    return a.expand(3, -1, -1).permute(1, 2, 0).numpy()


def check_grid(png: np.ndarray, images, factor, class_names, region_views=None):
    """Every drawn stored image and formation is in `png` where grid_layout puts it, upscaled pixel for
    pixel (outside UDD's box outlines), at least MIN_PX wide; each drawn row has its class name."""
    n, c, size, _ = images.shape
    k = len(class_names)
    ipc = n // k
    s, cols, cell, rows, per, (height, width) = pictures.grid_layout(k, ipc, size, factor)
    assert png.shape == (height, width, 3) and cell >= pictures.MIN_PX
    formations = decode_all(images, torch.zeros(n, dtype=torch.long), factor)[0]  # what evaluation trains on
    for r in range(rows):
        y = pictures.TITLE_H + pictures.PAD + r * (cell + pictures.PAD)
        name = png[y:y + cell, :pictures.LABEL_W - 4]
        assert (name.min(axis=2) < 128).sum() > 10, f"no class name drawn on row {r}"
        for j in range(per):
            m = r * ipc + j
            x = pictures.LABEL_W + j * (cols * (cell + pictures.PAD) + pictures.GAP)
            drawn = png[y:y + cell, x:x + cell]
            want = upscaled(images[m], s)
            keep = np.ones((cell, cell), bool)
            if region_views is not None:  # the outline covers 2 px inside each box's border
                src, boxes = region_views
                for y0, x0, y1, x1 in boxes[src == m].tolist():
                    ring = np.zeros_like(keep)
                    ring[y0 * s:y1 * s, x0 * s:x1 * s] = True
                    ring[y0 * s + 2:y1 * s - 2, x0 * s + 2:x1 * s - 2] = False
                    assert (drawn[ring] == pictures.BOX_COLOR).all(axis=1).mean() > 0.95
                    keep &= ~ring
            assert np.array_equal(drawn[keep], want[keep]), f"stored image {m}"
            for t in range(cols - 1):
                xt = x + (t + 1) * (cell + pictures.PAD)
                assert np.array_equal(png[y:y + cell, xt:xt + cell], upscaled(formations[t * n + m], s)), \
                    f"formation {t} of stored image {m}"
    return rows, per
