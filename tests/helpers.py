"""What the tests share: where the repository and the real data are, the devices and backends a test
runs on, the equalities the engine's tests assert, small files in the official dataset formats, and
the check of a drawn grid.png. Plain functions (the fixtures are in conftest.py); a test module
imports these, never another test module."""
import gzip
import io
import os
import pickle
import shutil
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


# Image sides beyond CIFAR's (issue 23): each op's test `<op>_at_large_sides` checks it against its
# reference at these sides, on the shapes it takes there.
LARGE_SIDES = (64, 128, 224)


def convnet_map(side: int, depth=None) -> tuple:
    """(channels, h, w) of ConvNet's feature map at an image side: at its depth by resolution
    (udd_fast.models.convnet_depth: the region-search proxy's and the matching ConvNet's; 4 x 4 at 64
    and 128 px, 3 x 3 at 224) or at a given depth (3: ConvNet-3's side/8 map, the widest)."""
    from udd_fast.models import ConvNet, convnet_depth

    return ConvNet(1, 3, side, depth=depth or convnet_depth(side)).feature_shape


def _value_and_marks(p):
    return (p.values[0], list(p.marks)) if hasattr(p, "values") else (p, [])


def large_side_params():
    """(ops_backend, side, dtype) for `@pytest.mark.parametrize("ops_backend,side,dtype", ...,
    indirect=["ops_backend"])`: every backend of OPS_BACKENDS but torch (the references themselves)
    at every side of LARGE_SIDES in float32, and at the largest (the longest sums) in OTHER_DTYPES
    too, with their marks. Without a GPU, Triton runs in its interpreter, 2-10 s per op at 64 px in
    float32 (more under load): its other cases there are marked slow."""
    interpreted = not torch.cuda.is_available()
    out = []
    for backend, side, dt in ((b, s, d) for b in OPS_BACKENDS[1:] for s in LARGE_SIDES
                              for d in (torch.float32, *(OTHER_DTYPES if s == LARGE_SIDES[-1] else ()))):
        (name, bmarks), (dtype, dmarks) = _value_and_marks(backend), _value_and_marks(dt)
        slow = interpreted and name == "triton" and (side > LARGE_SIDES[0] or dtype != torch.float32)
        out.append(pytest.param(name, side, dtype, marks=bmarks + dmarks + [pytest.mark.slow] * slow,
                                id=f"{name}-{side}px-{str(dtype).removeprefix('torch.')}"))
    return out


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


# -- the JPEG sets (Tiny-ImageNet, ImageNet) in their official layouts, from real CIFAR-10 images --------
# ImageNet's photos come in many sizes; these are common ones (width, height), both orientations.
IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333), (640, 480), (333, 500), (500, 500))


def jpeg_of(img_chw: np.ndarray, wh: tuple, path: Path):
    """A real 32 px image (uint8 [3, 32, 32]) scaled to `wh` (bicubic) and saved as a JPEG at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img_chw.transpose(1, 2, 0)).resize(wh, Image.BICUBIC).save(path, quality=90)


def cifar_by_class(cifar, per_class: int, split="train"):
    """The first `per_class` images of each CIFAR-10 class (uint8 [3, 32, 32] each), by class."""
    x, y = (cifar.train_images, cifar.train_labels) if split == "train" else (cifar.test_images, cifar.test_labels)
    return [[x[i] for i in np.flatnonzero(y == c)[:per_class]] for c in range(10)]


def write_tiny_imagenet(root: Path, cifar, classes=3, per_class=12, per_class_val=4) -> list:
    """Tiny-ImageNet's layout under root/tiny-imagenet-200 with `classes` classes of real CIFAR-10 images at
    64 px (wnids listed unsorted, as the official wnids.txt is); returns the wnids in wnids.txt's order."""
    base = root / "tiny-imagenet-200"
    wnids = [f"n0{9 - c}000{c:03d}" for c in range(classes)]  # descending: sorted order differs from the file's
    train, val = cifar_by_class(cifar, per_class), cifar_by_class(cifar, per_class_val, "test")
    lines = []
    for c, w in enumerate(wnids):
        for i, img in enumerate(train[c]):
            jpeg_of(img, (64, 64), base / "train" / w / "images" / f"{w}_{i}.JPEG")
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
        for i, img in enumerate(val[c]):
            name = f"val_{c * per_class_val + i}.JPEG"
            jpeg_of(img, (64, 64), base / "val" / "images" / name)
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tcifar class {c}, thing\n" for c, w in enumerate(wnids))
                                    + "n99999999\tunused\n")
    (base / "val" / "val_annotations.txt").write_text("\n".join(reversed(lines)) + "\n")
    return wnids


def write_imagenet(root: Path, cifar, wnids, per_class=8, per_class_val=3):
    """ImageNet's layout under root/imagenet (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) for `wnids`, class c holding
    real CIFAR-10 images of class c % 10 scaled to ImageNet's photo sizes."""
    base = root / "imagenet"
    train, val = cifar_by_class(cifar, per_class), cifar_by_class(cifar, per_class_val, "test")
    for c, w in enumerate(wnids):
        for split, imgs in (("train", train[c % 10]), ("val", val[c % 10])):
            for i, img in enumerate(imgs):
                jpeg_of(img, IMAGENET_SIZES[(c + i) % len(IMAGENET_SIZES)], base / split / w / f"{w}_{i}.JPEG")


# -- pages in a real browser ---------------------------------------------------------------------------

def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render(html_path, tmp_path):
    """Open html_path in headless chromium: (screenshot as an array, console error lines)."""
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser installed (Debian: apt-get install chromium; .ci/run installs it)")
    shot = tmp_path / f"{html_path.stem}.png"
    profile = tmp_path / f"profile-{html_path.stem}"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1200,1400",
           html_path.resolve().as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(tmp_path)})
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    # chromium logs every console message at one level (INFO:CONSOLE); the report has no script, so
    # any message is an error (an uncaught exception, a console.error)
    console = [line for line in p.stderr.splitlines() if ":CONSOLE" in line]
    return np.array(Image.open(shot).convert("RGB")), console
