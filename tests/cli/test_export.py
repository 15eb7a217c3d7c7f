"""`python -m udd_fast.export`: the decoded training set of a distilled set, built here from real MNIST
and CIFAR-10 images (IDC's mix init at factor 2, so decoding matters), round-tripped through each
format and udd_fast's own user-data readers; bad input refused with exit status 2 and nothing written."""
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REPO, require_dataset
from udd_fast import export
from udd_fast.artifacts import save_distilled
from udd_fast.config import build_config
from udd_fast.data import load_dataset
from udd_fast.decode import mix_init
from udd_fast.distill import main as distill_main
from udd_fast.result import Result
from udd_fast.decode import decode_all

IPC, FACTOR = 3, 2  # 12 formations per class: the user-data reader holds out the 10th as test


def _make_run(ds, run_dir):
    """A run directory whose distilled.pt holds IDC's mix init of each class's first real images."""
    stored = []
    for k in range(ds.info.num_classes):
        idx = np.flatnonzero(ds.train_labels == k)[:IPC * FACTOR ** 2]
        stored.append(mix_init(torch.from_numpy(ds.train_images[idx]).float() / 255, IPC, FACTOR))
    labels = torch.arange(ds.info.num_classes).repeat_interleave(IPC)
    cfg = build_config(ds.info.name, IPC, "smoke", ds.info.size, ds.info.size_base, factor=FACTOR)
    run_dir.mkdir()
    save_distilled(run_dir / "distilled.pt", torch.cat(stored), labels, FACTOR, ds.info, cfg.to_dict())
    return run_dir


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, mnist_arrays):
    return _make_run(mnist_arrays, tmp_path_factory.mktemp("export") / "mnist")


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, real_data_dir):
    require_dataset(real_data_dir, "cifar-10-batches-py")
    return _make_run(load_dataset("cifar10", real_data_dir, download=False),
                     tmp_path_factory.mktemp("export") / "cifar10")


@pytest.fixture(params=["mnist", "cifar10"])
def run_dir(request):
    return request.getfixturevalue(f"{request.param.replace('10', '')}_run")


def _decoded(run_dir):
    r = Result.load(run_dir)
    x, y = decode_all(r.images, r.labels, r.factor)
    return x.clamp(0, 1), y, r


def _reader_split(u8, labels):
    """What the user-data readers do without a test split: hold out each class's 10th, 20th, ... image."""
    rank, seen = np.empty(len(labels), dtype=np.int64), {}
    for i, k in enumerate(labels.tolist()):
        rank[i] = seen[k] = seen.get(k, -1) + 1
    held = rank % 10 == 9
    return (u8[~held], labels[~held]), (u8[held], labels[held])


def _check_user_data(ds, u8, labels):
    (train_x, train_y), (test_x, test_y) = _reader_split(u8, labels)
    assert np.array_equal(ds.train_images, train_x) and np.array_equal(ds.train_labels, train_y)
    assert np.array_equal(ds.test_images, test_x) and np.array_equal(ds.test_labels, test_y)
    assert len(test_y) == ds.info.num_classes  # one held-out image per class


def _u8(x):
    return np.rint(x.double().numpy() * 255).astype(np.uint8)


def test_folder_round_trip(run_dir, tmp_path, capsys):
    x, y, d = _decoded(run_dir)
    out = tmp_path / "set"
    assert export.main([str(run_dir), "--format", "folder", "--out", str(out)]) == 0
    assert f"exported {len(y)} images" in capsys.readouterr().out
    names = list(d.class_names)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == [f"{k:02d}-{n}" for k, n in enumerate(names)]  # sorted order == label order
    png = next((out / folders[0]).iterdir())
    assert Image.open(png).mode == ("L" if x.shape[1] == 1 else "RGB")
    meta = json.loads((out / "export.json").read_text())
    assert meta["class_names"] == names and meta["factor"] == FACTOR and meta["num_images"] == len(y)
    ds = load_dataset(str(out))
    assert ds.info.class_names == tuple(folders)
    order = np.argsort(y.numpy(), kind="stable")  # the reader reads class by class, files in row order
    _check_user_data(ds, _u8(x)[order], y.numpy()[order])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_npz_round_trip(run_dir, tmp_path):
    x, y, d = _decoded(run_dir)
    out = tmp_path / "set.npz"
    assert export.export_set(d, "npz", out)["num_images"] == len(y)
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z.files) == ["class_names", "dataset", "factor", "images", "labels"]
        assert z["images"].dtype == np.float32 and np.array_equal(z["images"], x.numpy())
        assert z["labels"].dtype == np.int64 and np.array_equal(z["labels"], y.numpy())
        assert z["class_names"].tolist() == list(d.class_names)
        assert int(z["factor"]) == FACTOR and str(z["dataset"]) == d.info.name
    ds = load_dataset(str(out))  # also user data as it stands
    assert ds.info.class_names == tuple(d.class_names)
    _check_user_data(ds, _u8(x), y.numpy())


@pytest.mark.integration
def test_pt_round_trip_through_the_command_line(mnist_run, tmp_path):
    x, y, _ = _decoded(mnist_run)
    out = tmp_path / "set.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "udd_fast.export", str(mnist_run / "distilled.pt"), "--format", "pt",
                          "--out", str(out)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == (f"exported 120 images of 1x28x28 (30 stored x 4 formations, 10 classes) as pt "
                                  f"to {out}")
    images, labels = torch.load(out, weights_only=True)
    assert images.dtype == torch.float32 and torch.equal(images, x)
    assert labels.dtype == torch.int64 and torch.equal(labels, y)


def test_a_udd_set_exports_its_region_views(mnist_arrays, tmp_path):
    """What the evaluation trains on: the formations, then one crop_resize view per saved box."""
    from udd_fast.ops import crop_resize

    ds = mnist_arrays
    x = torch.from_numpy(ds.train_images[:10]).float() / 255
    y = torch.from_numpy(ds.train_labels[:10]).long()
    src, boxes = torch.tensor([0, 3, 9]), torch.tensor([[0, 0, 7, 7], [2, 5, 12, 15], [14, 14, 28, 28]])
    views = crop_resize(x, src, boxes, (28, 28)).clamp(0, 1)
    for on in (True, False):
        cfg = build_config("mnist", 1, "smoke", 28, 28, factor=FACTOR, method="udd", eval_region_views=on)
        run = tmp_path / f"udd-{on}"
        run.mkdir()
        save_distilled(run / "distilled.pt", x, y, FACTOR, ds.info, cfg.to_dict(), (src, boxes))
        res = export.export_set(run, "pt", tmp_path / f"set-{on}.pt")
        images, labels = torch.load(tmp_path / f"set-{on}.pt", weights_only=True)
        formations, flabels = decode_all(x, y, FACTOR)
        assert torch.equal(images[:40], formations.clamp(0, 1)) and torch.equal(labels[:40], flabels)
        if on:
            assert res["num_region_views"] == 3 and torch.equal(images[40:], views)
            assert torch.equal(labels[40:], y[src])
        else:
            assert res["num_region_views"] == 0 and images.shape[0] == 40


def test_exported_folder_trains_end_to_end(mnist_run, tmp_path):
    folder = tmp_path / "exported"
    export.export_set(mnist_run, "folder", folder)
    rc = distill_main(["--dataset", str(folder), "--method", "random", "--ipc", "1", "--preset", "smoke",
                       "--eval-runs", "1", "--eval-epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == f"folder:{folder}" and len(summary["accuracy_runs"]) == 1


def test_many_classes_keep_their_order():
    names = [f"c{k}" for k in range(120)]
    folders = export.class_folders(names)
    assert folders[5] == "005-c5" and sorted(folders) == folders
    assert export.class_folders(["T-shirt/top", "a b"]) == ["00-T-shirt_top", "01-a_b"]


# -- bad input: a message naming the file or flag, exit status 2, nothing written -------------------

def _refused(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for n in needles:
        assert str(n) in err, err
    return err


def _listing(path):
    return sorted(p.name for p in path.iterdir())


def test_missing_and_corrupt_distilled(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "set.npz"
    _refused(capsys, export.main([str(tmp_path / "empty"), "--format", "npz", "--out", str(out)]),
             tmp_path / "empty" / "distilled.pt")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "distilled.pt").write_bytes(b"PK\x03\x04 not a torch file")
    _refused(capsys, export.main([str(tmp_path / "bad"), "--format", "folder", "--out", str(out)]),
             tmp_path / "bad" / "distilled.pt")
    assert _listing(tmp_path) == ["bad", "empty"]


def test_unknown_format(mnist_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        export.main([str(mnist_run), "--format", "tiff", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "--format" in capsys.readouterr().err
    with pytest.raises(Exception, match="--format"):
        export.export_set(mnist_run, "tiff", tmp_path / "x")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_existing_path_needs_force(mnist_run, tmp_path, capsys, fmt):
    out = tmp_path / f"set.{fmt}"
    assert export.main([str(mnist_run), "--format", fmt, "--out", str(out)]) == 0
    if fmt == "folder":
        (out / "stray.txt").write_text("from the old export")
    old = out.read_bytes() if fmt != "folder" else None
    inode = out.stat().st_ino
    before = _listing(tmp_path)
    _refused(capsys, export.main([str(mnist_run), "--format", fmt, "--out", str(out)]), out, "--force")
    assert (out / "stray.txt").exists() if fmt == "folder" else out.read_bytes() == old
    assert export.main([str(mnist_run), "--format", fmt, "--out", str(out), "--force"]) == 0
    assert _listing(tmp_path) == before  # replaced in place, no temporaries left
    assert out.stat().st_ino != inode  # a new file or folder took the earlier export's place
    if fmt == "folder":
        assert not (out / "stray.txt").exists() and len(load_dataset(str(out)).train_labels) == 110
    else:
        assert out.stat().st_size > 1000


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_force_never_replaces_a_file_an_export_did_not_write(mnist_run, tmp_path, capsys, fmt):
    """--force replaces an earlier export of the same format, nothing else: not a file of other bytes,
    not another format's export, not another npz."""
    other = tmp_path / "other.npz"
    np.savez(other, images=np.zeros((1, 1, 2, 2), np.float32))  # an npz, but not an export's keys
    pt_export = tmp_path / "earlier.pt"
    assert export.main([str(mnist_run), "--format", "pt", "--out", str(pt_export)]) == 0
    for victim in (tmp_path / "notes.bin", other, pt_export if fmt == "npz" else None):
        if victim is None:
            continue
        if not victim.exists():
            victim.write_bytes(b"not an export")
        before = victim.read_bytes()
        _refused(capsys, export.main([str(mnist_run), "--format", fmt, "--out", str(victim), "--force"]), victim,
                 f"not an earlier {fmt} export")
        assert victim.read_bytes() == before


@pytest.mark.integration
def test_an_export_never_writes_over_a_run_directory(tmp_path, capsys, real_data_dir):
    """--out naming the set being exported, its run directory or any file of a run directory (the set,
    the checkpoint, the summary...) is refused, --force or not, and every byte stays."""
    run = tmp_path / "run"
    assert distill_main(["--dataset", "mnist", "--preset", "smoke", "--iterations", "1", "--inner-loop", "1",
                         "--eval-runs", "0", "--data-dir", str(real_data_dir), "--no-download", "--no-progress",
                         "--out", str(run)]) == 0
    assert (run / "checkpoint.pt").exists() and (run / "distilled.pt").exists()
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    before = {p: p.read_bytes() for d in (run, other) for p in d.iterdir()}
    cases = [(run / "distilled.pt", "npz", "the set being exported"), (run, "folder", "the set being exported"),
             (run / "checkpoint.pt", "npz", "a file of the run directory"),
             (run / "summary.json", "pt", "a file of the run directory"),
             (other / "distilled.pt", "pt", "a file of the run directory"),
             (other / "checkpoint.pt", "npz", "a file of the run directory")]
    for target, fmt, why in cases:
        for force in ([], ["--force"]):
            rc = export.main([str(run), "--format", fmt, "--out", str(target), *force])
            err = capsys.readouterr().err
            assert rc == 2 and why in err and str(target) in err, (target, fmt, err)
    assert {p: p.read_bytes() for d in (run, other) for p in d.iterdir()} == before


def test_force_replaces_only_an_earlier_folder_export(mnist_run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for fmt, why in (("folder", "export.json"), ("npz", "directory")):
        _refused(capsys, export.main([str(mnist_run), "--format", fmt, "--out", str(mine), "--force"]), mine, why)
    assert _listing(mine) == ["notes.txt"]


def test_failed_write_keeps_the_old_export(mnist_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "set"
    export.export_set(mnist_run, "folder", out)
    (out / "stray.txt").write_text("from the old export")

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_json", disk_full)  # fails after every image is written
    _refused(capsys, export.main([str(mnist_run), "--format", "folder", "--out", str(out), "--force"]), out, "no space")
    assert _listing(tmp_path) == ["set"] and (out / "stray.txt").exists()


def test_unwritable_target(mnist_run, tmp_path, capsys):
    (tmp_path / "file").write_text("a regular file")
    for fmt, out in (("npz", tmp_path / "missing" / "set.npz"), ("folder", tmp_path / "file" / "sub")):
        _refused(capsys, export.main([str(mnist_run), "--format", fmt, "--out", str(out)]), out)
    assert _listing(tmp_path) == ["file"]
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only directory: the permission case cannot be made here")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        _refused(capsys, export.main([str(mnist_run), "--format", "pt", "--out", str(locked / "set.pt")]),
                 locked / "set.pt")
        assert _listing(locked) == []
    finally:
        locked.chmod(0o755)
