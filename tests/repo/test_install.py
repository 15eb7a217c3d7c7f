"""The package as a user installs it, built and run by the interpreter that runs the tests (its torch,
setuptools and wheel; no index, no downloads), never by whatever the base interpreter holds.

A copy of this checkout is packed as an sdist, the sdist unpacked and built into a wheel with a
compiler that always fails (CXX=false CC=false), and the wheel installed non-editable into a folder
of its own (`pip install --target`) that is put first on the path. From a directory outside the
checkout that installed copy:
- holds every module of the source tree (udd_fast/ and kernels/ as udd_fast.kernels), found by
  walking it with pkgutil, and imports each of them (udd_fast.kernels only where Triton is installed);
- survives the failed compile: it says why udd_fast._C is missing and its ops run on the torch
  backend, equal to their references;
- distills real MNIST (`smoke`), evaluates and exports the set from the command line.
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest

from helpers import REPO, require_dataset

pytestmark = pytest.mark.integration  # every test here starts processes

CHECK = textwrap.dedent("""
    import json, sys, warnings
    # an editable install of some checkout in this Python would otherwise serve udd_fast._C from it
    sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    import torch
    import udd_fast
    from udd_fast import ops
    from udd_fast.ops.cfc_loss import cfc_loss_ref, class_prototypes
    from udd_fast.ops.crop_resize import crop_resize_ref
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reasons = ops.available_backends(reasons=True)
        images = torch.rand(3, 3, 8, 8)
        src, boxes = torch.tensor([0, 2, 1]), torch.tensor([[0, 0, 8, 8], [1, 2, 7, 8], [0, 3, 5, 9]])
        backend = ops.resolve(images)
        crop = ops.crop_resize(images, src, boxes, (6, 6))
        feats, labels = torch.randn(5, 16), torch.tensor([0, 1, 2, 1, 0])
        protos = class_prototypes(torch.randn(3, 4, 16))
        loss = ops.cfc_loss(feats, labels, protos, 0.1)
    torch.testing.assert_close(crop, crop_resize_ref(images, src, boxes, (6, 6)))
    torch.testing.assert_close(loss, cfc_loss_ref(feats, labels, protos, 0.1))
    print(json.dumps({"file": udd_fast.__file__, "reasons": reasons, "backend": backend,
                      "warnings": [str(w.message) for w in caught]}))
""")

# Every module found by walking the installed package, and which of them imported (udd_fast.kernels
# needs Triton: without it those imports fail, and must fail for that reason alone).
WALK = textwrap.dedent("""
    import importlib, json, os, pkgutil
    import udd_fast

    def walk(path, prefix):  # pkgutil.iter_modules, recursively, without importing (walk_packages imports)
        for m in pkgutil.iter_modules(path):
            yield prefix + m.name
            if m.ispkg:
                yield from walk([os.path.join(p, m.name) for p in path], prefix + m.name + ".")

    found, failed = ["udd_fast", *walk(udd_fast.__path__, "udd_fast.")], {}
    for name in found:
        try:
            importlib.import_module(name)
        except Exception as e:
            failed[name] = f"{type(e).__name__}: {e}"
    print(json.dumps({"found": sorted(found), "failed": failed, "dir": dir(udd_fast)}))
""")


def _source_files():
    """This checkout's files as git sees them (tracked and new, not ignored): no build outputs."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout to copy the sources without build outputs")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def _source_modules():
    """The modules the source tree defines: udd_fast/**.py, and kernels/**.py as udd_fast.kernels."""
    names = set()
    for root, package in ((REPO / "udd_fast", "udd_fast"), (REPO / "kernels", "udd_fast.kernels")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.add(".".join([package, *parts]))
    return names


def _triton_installed():
    import importlib.util

    return importlib.util.find_spec("triton") is not None


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(target folder, environment, sdist members): the sdist of a copy of this checkout, its wheel
    built with a compiler that always fails, installed non-editable into the target folder, which the
    environment puts first on the path."""
    tmp = tmp_path_factory.mktemp("install")
    src, dist, wheels, target = tmp / "src", tmp / "dist", tmp / "wheels", tmp / "target"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "UDD_FAST_", "TRITON_"))}
    env.update(CXX="false", CC="false", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    # the sdist by the build backend's own hook (what `python -m build --sdist` calls)
    sdist = subprocess.run([sys.executable, "-c", f"from setuptools import build_meta as b; "
                                                  f"print(b.build_sdist({str(dist)!r}))"],
                           cwd=src, env=env, capture_output=True, text=True)
    assert sdist.returncode == 0, sdist.stdout + sdist.stderr
    archive = dist / sdist.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as tar:
        members = tar.getnames()
        tar.extractall(tmp / "unpacked", filter="data")
    (unpacked,) = (tmp / "unpacked").iterdir()
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run(pip + ["wheel", "-v", "--no-build-isolation", "--no-deps", "-w", str(wheels),
                                  str(unpacked)], cwd=tmp, env=env, capture_output=True, text=True)
    log = built.stdout + built.stderr
    assert built.returncode == 0, f"the wheel failed to build from the sdist:\n{log[-6000:]}"
    assert "extension udd_fast._C not built" in log, log[-6000:]
    (wheel,) = wheels.glob("udd_fast-*.whl")
    put = subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)], cwd=tmp, env=env,
                         capture_output=True, text=True)
    assert put.returncode == 0, put.stdout + put.stderr
    env["PYTHONPATH"] = str(target)  # before site-packages, and before any editable install's finder
    return target, env, [m.split("/", 1)[1] for m in members if "/" in m]


def test_the_sdist_carries_every_c_source_and_header(installed):
    *_, members = installed
    csrc = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "csrc").iterdir() if p.is_file())
    assert any(name.endswith((".h", ".cuh")) for name in csrc)
    missing = [name for name in csrc if name not in members]
    assert not missing, f"the sdist lacks {missing}"


def test_the_installed_package_holds_and_imports_every_module(installed, tmp_path):
    target, env, _ = installed
    run = subprocess.run([sys.executable, "-c", WALK], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    want = _source_modules()
    assert {"udd_fast.data", "udd_fast.engine", "udd_fast.ops", "udd_fast.kernels"} <= want
    assert want - set(got["found"]) == set(), "modules of the source tree missing from the wheel"
    assert set(got["found"]) - want == set(), "the wheel holds modules the source tree does not"
    failed = dict(got["failed"])
    if not _triton_installed():  # the Triton kernels import triton itself: without it, that is the one failure
        failed = {k: v for k, v in failed.items()
                  if not (k.startswith("udd_fast.kernels") and "No module named 'triton'" in v)}
    assert failed == {}, failed
    assert {"distill_dataset", "evaluate_distilled", "Result", "__version__"} <= set(got["dir"])


def test_install_survives_a_failing_compiler(installed, tmp_path):
    target, env, _ = installed
    run = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(str(target)), got["file"]  # the installed copy, not a checkout
    live, why = got["reasons"]["cpp"]
    assert not live and "udd_fast._C was not built: the build failed" in why, why
    assert got["reasons"]["torch"] == [True, "ok"] and got["backend"] == "torch"
    assert any("udd_fast._C was not built" in w for w in got["warnings"]), got["warnings"]


def test_the_installed_commands_distill_evaluate_and_export_real_mnist(installed, tmp_path, real_data_dir):
    """The three commands a user runs, from outside the checkout, on the installed copy alone."""
    require_dataset(real_data_dir, "MNIST")
    target, env, _ = installed
    env = dict(env, OMP_NUM_THREADS="2")

    def cli(*args):
        p = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert p.returncode == 0, f"{args}:\n{(p.stdout + p.stderr)[-4000:]}"
        return p.stdout + p.stderr

    run_dir = tmp_path / "run"
    log = cli("udd_fast.distill", "--dataset", "mnist", "--ipc", "1", "--preset", "smoke", "--eval-runs", "1",
              "--data-dir", str(real_data_dir), "--no-download", "--out", str(run_dir), "--no-progress")
    assert "saved" in log and str(target) not in str(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dataset"] == "mnist" and 0 <= summary["accuracy_mean"] <= 100
    out = cli("udd_fast.evaluate", str(run_dir), "--eval-runs", "1", "--eval-epochs", "2", "--no-progress")
    res = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert res["runs"] == 1 and 0 <= res["accuracy_mean"] <= 100
    cli("udd_fast.export", str(run_dir), "--format", "npz", "--out", str(tmp_path / "set.npz"))
    with np.load(tmp_path / "set.npz") as z:
        assert z["images"].shape == (10 * 4, 1, 28, 28) and sorted(set(z["labels"].tolist())) == list(range(10))
