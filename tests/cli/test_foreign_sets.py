"""Other tools' distilled sets evaluated by `python -m udd_fast.evaluate` (udd_fast/foreign.py): small files
written in each tool's layout (IDC's data.pt, DC/DSA/DM's res_*.pt, MTT's images_best.pt and labels_best.pt,
an .npz, an image folder) from real MNIST and CIFAR-10 images, read back to the same pixels, detected, and
refused with exit status 2 and a message naming the file and the fix when they cannot be evaluated."""
import json

import numpy as np
import pytest
import torch

from udd_fast import foreign
from udd_fast.artifacts import ArtifactError
from udd_fast.config import UsageError
from udd_fast.evaluate import main as evaluate_main

QUICK = ["--eval-runs", "1", "--eval-epochs", "2", "--no-progress", "--no-download"]


@pytest.fixture
def mnist_set(mnist_arrays):
    """Two real MNIST training images per class, class-major: (float images [20, 1, 28, 28] in [0, 1], labels)."""
    idx = np.concatenate([np.flatnonzero(mnist_arrays.train_labels == c)[:2] for c in range(10)])
    x = torch.from_numpy(mnist_arrays.train_images[idx]).float() / 255.0
    return x, torch.from_numpy(mnist_arrays.train_labels[idx]).long()


def _normalized(x, mean, std):
    shape = (1, len(mean), 1, 1)
    return (x - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def write_idc(path, x, y, info):
    """IDC's condense.py: torch.save([synset.data, synset.targets], data.pt), the data normalized."""
    torch.save([_normalized(x, info.mean, info.std), y], path)


def write_dc(path, runs):
    """DC/DSA/DM's main.py: {'data': [[image_syn, label_syn] per experiment], 'accs_all_exps': {model: accs}},
    the accuracies numpy floats as its evaluate_synset returns them."""
    accs = {"ConvNet": [np.float64(0.31), np.float64(0.29)]}
    torch.save({"data": [[xn, y] for xn, y in runs], "accs_all_exps": accs}, path)


def test_each_format_reads_back_the_pixels(mnist_set, mnist_arrays, tmp_path):
    x, y = mnist_set
    info = mnist_arrays.info
    write_idc(tmp_path / "data.pt", x, y, info)
    mean, std = foreign.DC_STATS["mnist"]
    other = torch.flip(x, [0])
    write_dc(tmp_path / "res_DM_MNIST_ConvNet_2ipc.pt", [(_normalized(other, mean, std), y.flip(0)),
                                                         (_normalized(x, mean, std), y)])
    np.savez(tmp_path / "set.npz", images=(x * 255).round().byte().permute(0, 2, 3, 1).numpy(), labels=y.numpy())
    from PIL import Image
    for i, (img, c) in enumerate(zip(x, y)):
        d = tmp_path / "folder" / str(int(c))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0] * 255).round().byte().numpy()).save(d / f"{i}.png")
    cases = {"idc": (tmp_path / "data.pt", dict(factor=2)), "dc": (tmp_path / "res_DM_MNIST_ConvNet_2ipc.pt", {}),
             "npz": (tmp_path / "set.npz", {}), "folder": (tmp_path / "folder", {})}
    for fmt, (path, flags) in cases.items():
        assert foreign.detect(path) == fmt
        result, notes = foreign.read_set(path, info, **flags)
        order = torch.argsort(result.labels * 1000 + torch.arange(len(result.labels)), stable=True)
        got = result.images[order] if fmt == "folder" else result.images
        torch.testing.assert_close(got, x, rtol=0, atol=1e-6, msg=fmt)
        assert torch.equal(result.labels[order] if fmt == "folder" else result.labels, y)
        assert result.factor == (2 if fmt == "idc" else 1) and result.info == info
    # DC's last experiment by default, another by --experiment
    r0, notes = foreign.read_set(tmp_path / "res_DM_MNIST_ConvNet_2ipc.pt", info, experiment=0)
    torch.testing.assert_close(r0.images, x.flip(0), rtol=0, atol=1e-6)
    assert notes == ["experiment 0 of 2"]


def test_mtt_sets_and_their_statistics(cifar_arrays, tmp_path):
    """MTT's run directory with CIFAR-10 images normalized with its statistics; --zca is required."""
    idx = np.concatenate([np.flatnonzero(cifar_arrays.train_labels == c)[:1] for c in range(10)])
    x = torch.from_numpy(cifar_arrays.train_images[idx]).float() / 255.0
    y = torch.arange(10)
    run = tmp_path / "logged_files" / "CIFAR10" / "sweet-wood-12"
    run.mkdir(parents=True)
    torch.save(_normalized(x, *foreign.MTT_STATS["cifar10"]), run / "images_best.pt")
    torch.save(y, run / "labels_best.pt")
    assert foreign.detect(run) == foreign.detect(run / "images_best.pt") == "mtt"
    with pytest.raises(UsageError, match="pass --zca on or --zca off"):
        foreign.read_set(run, cifar_arrays.info)
    with pytest.raises(UsageError, match="ZCA-whitened sets are not evaluated yet"):
        foreign.read_set(run, cifar_arrays.info, zca="on")
    result, _ = foreign.read_set(run, cifar_arrays.info, zca="off")
    torch.testing.assert_close(result.images, x, rtol=0, atol=1e-6)
    # soft labels (DATM and later MTT forks) are refused by name
    torch.save(torch.eye(10), run / "labels_best.pt")
    with pytest.raises(ArtifactError, match="soft labels"):
        foreign.read_set(run, cifar_arrays.info, zca="off")


def test_bad_sets_are_refused_before_any_training(mnist_set, mnist_arrays, cifar_arrays, tmp_path):
    x, y = mnist_set
    info = mnist_arrays.info
    write_idc(tmp_path / "data.pt", x, y, info)
    with pytest.raises(UsageError, match="does not record its factor.*pass --factor"):
        foreign.read_set(tmp_path / "data.pt", info)
    with pytest.raises(UsageError, match="--experiment applies to the dc format"):
        foreign.read_set(tmp_path / "data.pt", info, factor=2, experiment=0)
    # a set of another dataset: image size, class count
    with pytest.raises(ArtifactError, match="images of 1x28x28, cifar10 has 3x32x32"):
        foreign.read_set(tmp_path / "data.pt", cifar_arrays.info, factor=2)
    write_idc(tmp_path / "wide.pt", x, y + 5, info)
    with pytest.raises(ArtifactError, match=r"labels in \[5, 14\], mnist has 10 classes"):
        foreign.read_set(tmp_path / "wide.pt", info, factor=1)
    # not a set: random bytes, a list of three, a pickled object (never run)
    (tmp_path / "noise.pt").write_bytes(b"\x00\x01not a torch file" * 10)
    with pytest.raises(ArtifactError, match="noise.pt is not a readable"):
        foreign.detect(tmp_path / "noise.pt")
    torch.save([x, y, y], tmp_path / "three.pt")
    with pytest.raises(ArtifactError, match="three.pt: not a distilled set of a known format"):
        foreign.detect(tmp_path / "three.pt")
    marker = tmp_path / "ran"
    torch.save({"data": _Payload(str(marker)), "accs_all_exps": {}}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match="holds Python objects other than tensors"):
        foreign.read_set(tmp_path / "evil.pt", info, fmt="dc")
    assert not marker.exists()
    np.savez(tmp_path / "norm.npz", images=_normalized(x, info.mean, info.std).numpy(), labels=y.numpy())
    with pytest.raises(ArtifactError, match=r"float images must lie in \[0, 1\].*un-normalize them first"):
        foreign.read_set(tmp_path / "norm.npz", info)
    (tmp_path / "folder" / "seven").mkdir(parents=True)
    from PIL import Image
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "folder" / "seven" / "a.png")
    with pytest.raises(ArtifactError, match="class folder 'seven' is neither a class of mnist"):
        foreign.read_set(tmp_path / "folder", info)


class _Payload:
    """A pickled object that would create a file if it were unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.integration
def test_evaluate_command_on_other_tools_sets(mnist_set, mnist_arrays, real_data_dir, tmp_path, capsys):
    x, y = mnist_set
    write_idc(tmp_path / "data.pt", x, y, mnist_arrays.info)
    data = ["--data-dir", str(real_data_dir)]
    # the flags a format needs, and the dataset, are asked for with exit status 2, before any training
    for argv, says in (([], "does not name the data it was distilled on: pass it (--dataset NAME)"),
                       (["--dataset", "mnist"], "does not record its factor"),
                       (["--dataset", "mnist", "--factor", "2", "--zca", "off"], "--zca applies to the mtt format"),
                       (["--dataset", "cifar10", "--factor", "2"], "images of 1x28x28, cifar10 has 3x32x32")):
        capsys.readouterr()
        assert evaluate_main([str(tmp_path / "data.pt"), *argv, *data, *QUICK]) == 2
        err = capsys.readouterr().err
        assert says in err and "data.pt" in err, err
        assert "eval " not in err  # no training began
    out = tmp_path / "evals"
    assert evaluate_main([str(tmp_path / "data.pt"), "--dataset", "mnist", "--factor", "1", "--out", str(out),
                          *data, *QUICK]) == 0
    printed = capsys.readouterr().out
    res = json.loads(printed[printed.index("{"):printed.rindex("}") + 1])
    assert res["format"] == "idc" and res["num_train"] == 20 and res["arch"] == "convnet"
    assert 10.0 < res["accuracy_mean"] <= 100.0  # 20 real digits, 2 epochs: above chance
    assert json.loads((out / "eval_convnet.json").read_text())["accuracy_runs"] == res["accuracy_runs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.pt", "evals"]  # nothing written beside the set


def test_architecture_lists_and_idcs_epochs_per_network(capsys):
    from udd_fast.config import arch_eval_epochs
    assert arch_eval_epochs("densenet", 1000, 50, 2) == 400  # IDC's test.py
    assert arch_eval_epochs("densenet", 1000, 50, 1) == arch_eval_epochs("densenet", 1000, 10, 2) == 1000
    assert arch_eval_epochs("resnet10_bn", 1000, 50, 2) == 1000
    for bad, says in (("convnet,vgg11", "vgg11: choose from"), ("convnet,convnet", "an architecture named twice"),
                      (",", "choose from")):
        with pytest.raises(SystemExit) as e:
            evaluate_main(["somewhere", "--eval-arch", bad])
        assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.integration
def test_several_architectures_in_one_call(mnist_set, mnist_arrays, real_data_dir, tmp_path, capsys):
    x, y = mnist_set
    np.savez(tmp_path / "set.npz", images=(x * 255).round().byte().numpy(), labels=y.numpy())
    # tested on 500 real MNIST test images (an .npz of the data), not 10,000: the networks are what is checked
    ds = mnist_arrays
    np.savez(tmp_path / "mnist500.npz", images=ds.train_images[:1000], labels=ds.train_labels[:1000],
             test_images=ds.test_images[:500], test_labels=ds.test_labels[:500])
    out = tmp_path / "evals"
    assert evaluate_main([str(tmp_path / "set.npz"), "--dataset", str(tmp_path / "mnist500.npz"), "--eval-arch",
                          "convnet,convnet_bn", "--out", str(out), *QUICK]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out[captured.out.index("["):captured.out.rindex("]") + 1])
    assert [r["arch"] for r in printed] == ["convnet", "convnet_bn"] and all(r["format"] == "npz" for r in printed)
    for r in printed:
        assert json.loads((out / f"eval_{r['arch']}.json").read_text())["accuracy_runs"] == r["accuracy_runs"]
        assert f"{r['arch']}: {r['accuracy_mean']:.2f} +- " in captured.err
