"""A failing extension build never aborts the install: with a compiler that always fails
(CXX=false CC=false), `pip wheel --no-build-isolation` of a copy of this checkout succeeds, run by the
interpreter that runs the tests (its torch, setuptools and wheel; no index, no downloads). The wheel,
installed non-editable into a folder of its own (`pip install --target`) and imported from there by
the same interpreter, reports why udd_fast._C is missing, and the ops run on the torch backend,
equal to their references."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

CHECK = textwrap.dedent("""
    import json, sys, warnings
    # an editable install of some checkout in this Python would otherwise serve udd_fast._C from it
    sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    import torch
    import udd_fast
    from udd_fast import ops
    from udd_fast.cfc import prototypes_ref
    from udd_fast.ops.cfc_loss import cfc_loss_ref
    from udd_fast.ops.crop_resize import crop_resize_ref
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reasons = ops.available_backends(reasons=True)
        images = torch.rand(3, 3, 8, 8)
        src, boxes = torch.tensor([0, 2, 1]), torch.tensor([[0, 0, 8, 8], [1, 2, 7, 8], [0, 3, 5, 9]])
        backend = ops.resolve(images)
        crop = ops.crop_resize(images, src, boxes, (6, 6))
        feats, labels = torch.randn(5, 16), torch.tensor([0, 1, 2, 1, 0])
        protos = prototypes_ref(torch.randn(3, 4, 16))
        loss = ops.cfc_loss(feats, labels, protos, 0.1)
    torch.testing.assert_close(crop, crop_resize_ref(images, src, boxes, (6, 6)))
    torch.testing.assert_close(loss, cfc_loss_ref(feats, labels, protos, 0.1))
    print(json.dumps({"file": udd_fast.__file__, "reasons": reasons, "backend": backend,
                      "warnings": [str(w.message) for w in caught]}))
""")


def _source_files():
    """This checkout's files as git sees them (tracked and new, not ignored): no build outputs."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout to copy the sources without build outputs")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(target folder, environment): a wheel of a copy of this checkout built with a compiler that
    always fails, installed non-editable into the target folder, which the environment puts first on
    the path. Built and run by this interpreter, so that it holds whatever this one holds (a venv's
    packages or the global ones), never what the base interpreter happens to have."""
    tmp = tmp_path_factory.mktemp("install")
    src, wheels, target = tmp / "src", tmp / "wheels", tmp / "target"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "UDD_FAST_", "TRITON_"))}
    env.update(CXX="false", CC="false", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run(pip + ["wheel", "-v", "--no-build-isolation", "--no-deps", "-w", str(wheels), str(src)],
                           cwd=tmp, env=env, capture_output=True, text=True)
    log = built.stdout + built.stderr
    assert built.returncode == 0, f"the wheel failed to build:\n{log[-6000:]}"
    assert "extension udd_fast._C not built" in log, log[-6000:]
    (wheel,) = wheels.glob("udd_fast-*.whl")
    put = subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)], cwd=tmp, env=env,
                         capture_output=True, text=True)
    assert put.returncode == 0, put.stdout + put.stderr
    env["PYTHONPATH"] = str(target)  # before site-packages, and before any editable install's finder
    return target, env


def test_install_survives_a_failing_compiler(installed, tmp_path):
    target, env = installed
    run = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(str(target)), got["file"]  # the installed copy, not a checkout
    live, why = got["reasons"]["cpp"]
    assert not live and "udd_fast._C was not built: the build failed" in why, why
    assert got["reasons"]["torch"] == [True, "ok"] and got["backend"] == "torch"
    assert any("udd_fast._C was not built" in w for w in got["warnings"]), got["warnings"]
