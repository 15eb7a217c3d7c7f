"""Missing built-in files: the official sources (md5-checked), the download, and the message naming
the files and URLs when they cannot be had."""
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from .dataset import DataError
from .registry import DATASETS, IDX_STEMS, SVHN_FILES, required_files

DOWNLOAD_TIMEOUT = 30.0

# the official sources; _MD5: url -> md5 of the downloaded file
_MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_SVHN_MIRROR = "http://ufldl.stanford.edu/housenumbers/"
_CIFAR_ARCHIVES = {  # dataset -> (url, archive file name)
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz"),
}

_MD5 = {
    _MNIST_MIRROR + "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    _MNIST_MIRROR + "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    _MNIST_MIRROR + "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    _MNIST_MIRROR + "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    _FASHION_MIRROR + "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    _FASHION_MIRROR + "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    _FASHION_MIRROR + "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    _FASHION_MIRROR + "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    _CIFAR_ARCHIVES["cifar10"][0]: "c58f30108f718f92721af3b95e74349a",
    _CIFAR_ARCHIVES["cifar100"][0]: "eb9058c3a382ffc7106e4002c42a8d85",
    _SVHN_MIRROR + "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    _SVHN_MIRROR + "test_32x32.mat": "eb5a983be6a315427106f1b2a9ae4c5e",
}


def _official_urls(key: str) -> list[str]:
    if key in _CIFAR_ARCHIVES:
        return [_CIFAR_ARCHIVES[key][0]]
    if key == "svhn":
        return [_SVHN_MIRROR + f for f in SVHN_FILES.values()]
    mirror = _MNIST_MIRROR if key == "mnist" else _FASHION_MIRROR
    return [mirror + stem + ".gz" for pair in IDX_STEMS.values() for stem in pair]


def _missing_message(key: str, root: Path, missing: list[Path], reason: str) -> str:
    spec = DATASETS[key]
    lines = [f"{spec['title']} files are missing ({reason}):"]
    lines += [f"  {p}" for p in missing]
    place = root / spec["folder"]
    if key in _CIFAR_ARCHIVES:
        lines.append(f"Download {_CIFAR_ARCHIVES[key][0]} and extract it into {root} "
                     f"(it unpacks to {place}), or call load_dataset(..., download=True).")
    else:
        lines.append(f"Place them in {place} (the .gz or the uncompressed file for MNIST-style data), "
                     "or call load_dataset(..., download=True). Official URLs:")
        lines += [f"  {u}" for u in _official_urls(key)]
    return "\n".join(lines)


def ensure_files(key: str, root: Path, download: bool) -> None:
    """Download the built-in's missing files (when `download`), else a DataError naming them and their URLs."""
    missing = [p for p in required_files(key, root) if not p.exists()]
    if not missing:
        return
    if not download:
        raise DataError(_missing_message(key, root, missing, "download=False"))
    _download(key, root, missing)
    still = [p for p in required_files(key, root) if not p.exists()]
    if still:
        raise DataError(_missing_message(key, root, still, "still missing after download"))


class _NetworkError(Exception):
    """Internal: the network failed (turned into a DataError listing the missing files)."""


def _urlopen(url, timeout):
    """The single point of network access (tests monkeypatch this)."""
    return urllib.request.urlopen(url, timeout=timeout)


def _download(key: str, root: Path, missing: list[Path]) -> None:
    try:
        if key in _CIFAR_ARCHIVES:
            url, archive_name = _CIFAR_ARCHIVES[key]
            archive = root / archive_name
            _fetch(url, archive)
            _extract_tar(archive, root, DATASETS[key]["folder"])
            return
        mirror = {"mnist": _MNIST_MIRROR, "fashionmnist": _FASHION_MIRROR, "svhn": _SVHN_MIRROR}[key]
        for path in missing:
            # MNIST-style files are always downloaded as .gz, the name we report when missing
            _fetch(mirror + path.name, path)
    except _NetworkError as exc:
        raise DataError(_missing_message(key, root, missing, f"download failed: {exc}")) from exc


def _fetch(url: str, dest: Path) -> None:
    """Stream url to dest.part, check its md5, then rename to dest (atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        actual = _stream_to(url, part)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    expected = _MD5[url]
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DataError(f"md5 mismatch for {url}: expected {expected}, got {actual}; "
                        "the download was deleted, try again or place the file by hand")
    os.replace(part, dest)


def _stream_to(url: str, part: Path) -> str:
    """Write the body of url to part; return its md5 hex digest."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with _urlopen(url, DOWNLOAD_TIMEOUT) as resp, open(part, "wb") as fh:
            with _progress_bar(_content_length(resp), Path(part).name[: -len(".part")]) as bar:
                while chunk := resp.read(1 << 20):
                    fh.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _NetworkError(f"{url}: {exc}") from exc
    return digest.hexdigest()


def _content_length(resp) -> int | None:
    headers = getattr(resp, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    return int(value) if value and str(value).isdigit() else None


class _NoBar:
    """Stand-in when tqdm is not installed."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


def _progress_bar(total, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    # disable=None: no bar when stderr is not a terminal (CI logs, tests)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=None)


def _safe_member_path(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    rel = PurePosixPath(member.name)
    if rel.is_absolute() or ".." in rel.parts or member.name.startswith(("/", "\\")):
        raise DataError(f"{archive}: refusing to extract unsafe path {member.name!r}")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing to extract {member.name!r} (not a regular file or directory)")
    return rel


def _extract_tar(archive: Path, root: Path, folder: str) -> None:
    """Extract archive into a temp dir under root, move missing files of `folder` into
    place, and delete the temp dir and the archive."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                rel = _safe_member_path(member, archive)
                target = tmp.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        src_dir = tmp / folder
        if not src_dir.is_dir():
            raise DataError(f"{archive}: archive has no folder {folder!r}")
        dest_dir = root / folder
        dest_dir.mkdir(parents=True, exist_ok=True)
        for item in sorted(src_dir.iterdir()):
            if not (dest_dir / item.name).exists():  # never overwrite files the user placed
                os.replace(item, dest_dir / item.name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc}); try the download again") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink(missing_ok=True)
