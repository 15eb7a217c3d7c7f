"""Backend selection of udd_fast.ops: env var and setter, auto's choice, clear errors for missing
backends, import failures reported once, the Triton kernels importable as udd_fast.kernels, and
(in CI) every backend that should be live here is."""
import json
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import REPO
from udd_fast import augment, ops
from udd_fast.ops import backend
from udd_fast.ops.crop_resize import crop_resize_ref


def test_available_backends_lists_every_backend_with_reasons():
    live = ops.available_backends()
    assert set(live) == {"torch", "cpp", "cuda", "triton"} and live["torch"] is True
    detail = ops.available_backends(reasons=True)
    for name, (ok, why) in detail.items():
        assert ok == live[name] and isinstance(why, str) and why
        assert (why == "ok") == ok


def test_ci_has_the_backends_this_machine_should_have():
    """In CI (CI=true) a backend that should be live but is not fails the run: on a CPU machine
    the C++ extension and Triton (interpreted); on a GPU machine also the CUDA extension."""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        pytest.skip("only enforced in CI (env CI=true)")
    detail = ops.available_backends(reasons=True)
    expected = ["cpp", "triton"] + (["cuda"] if torch.cuda.is_available() else [])
    missing = {name: detail[name][1] for name in expected if not detail[name][0]}
    assert not missing, f"backends that should be live are not: {missing}"


def test_parameter_columns_agree_with_the_kernels():
    if not ops.available_backends()["triton"]:
        pytest.skip("triton not live")
    from udd_fast.kernels import diff_augment as k  # importable without installing (ops' shim)

    for col in ("FLIP", "BRIGHT", "SAT", "CONTRAST", "TX", "TY", "CUT_X", "CUT_Y", "SCALE_X", "SCALE_Y", "ROT", "OP",
                "NUM_PARAMS"):
        assert getattr(k, col) == getattr(augment, col), col
    assert k.__file__.startswith(str(REPO / "kernels"))


def test_set_backend_and_context_manager():
    before = ops.get_backend()
    with ops.use_backend("torch"):
        assert ops.get_backend() == "torch" and ops.resolve(torch.zeros(1)) == "torch"
    assert ops.get_backend() == before
    with pytest.raises(ValueError, match="unknown udd_fast backend"):
        ops.set_backend("fastest")
    assert ops.get_backend() == before


def test_set_backend_none_rereads_the_env(monkeypatch):
    before = ops.get_backend()
    monkeypatch.setenv(ops.ENV_VAR, "torch")
    try:
        assert ops.set_backend() == "torch"
    finally:
        ops.set_backend(before)


def test_env_var_is_read_at_import():
    code = "from udd_fast import ops; print(ops.get_backend())"
    env = dict(os.environ, UDD_FAST_BACKEND="torch", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch"
    env["UDD_FAST_BACKEND"] = "bogus"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "unknown udd_fast backend 'bogus'" in out.stderr


def test_auto_picks_cpp_on_cpu_tensors_else_torch():
    with ops.use_backend("auto"):
        want = "cpp" if ops.why_unavailable("cpp", torch.device("cpu")) is None else "torch"
        assert ops.resolve(torch.zeros(1)) == want
        assert ops.resolve(torch.zeros(1, dtype=torch.float16)) == "torch"  # C++ is float32/float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_cuda_prefers_triton_then_cuda():
    live = ops.available_backends()
    want = "triton" if live["triton"] else "cuda" if live["cuda"] else "torch"
    with ops.use_backend("auto"):
        assert ops.resolve(torch.zeros(1, device="cuda")) == want


def test_explicit_backend_that_cannot_run_raises(monkeypatch):
    if not ops.available_backends()["triton"]:
        pytest.skip("triton not live")
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine Triton runs on CUDA tensors; the CPU case needs the interpreter off")
    with ops.use_backend("triton"):
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            ops.crop_resize(torch.rand(1, 3, 4, 4), torch.tensor([0]), torch.tensor([[0, 0, 2, 2]]), (4, 4))
    if not torch.cuda.is_available():
        with warnings.catch_warnings(), pytest.raises(RuntimeError, match="cuda"):
            warnings.simplefilter("ignore")  # the failed import is also reported as a warning
            ops.set_backend("cuda")  # the extension is not built without CUDA


def test_missing_extension_is_reported_once_and_auto_falls_back(monkeypatch):
    """Simulate a failed build: importing udd_fast._C fails; auto warns once with the import error
    and runs the reference; an explicit request raises."""
    monkeypatch.setitem(sys.modules, "udd_fast._C", None)  # makes `import udd_fast._C` raise
    monkeypatch.delitem(backend._modules, "cpp", raising=False)
    monkeypatch.setattr(backend, "_warned", set())
    monkeypatch.setattr(backend, "_errors", {})
    images, src, boxes = torch.rand(2, 3, 6, 6), torch.tensor([0, 1]), torch.tensor([[0, 0, 3, 3], [3, 3, 6, 6]])
    with ops.use_backend("auto"):
        with pytest.warns(RuntimeWarning, match=r"backend 'cpp' is unavailable \(ModuleNotFoundError|ImportError"):
            assert ops.resolve(images) == "torch"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # reported once, not again
            out = ops.crop_resize(images, src, boxes, (6, 6))
    torch.testing.assert_close(out, crop_resize_ref(images, src, boxes, (6, 6)))
    assert ops.available_backends(reasons=True)["cpp"][0] is False
    with pytest.raises(RuntimeError, match="'cpp' is not available"):
        ops.set_backend("cpp")
    monkeypatch.undo()
    backend._modules.pop("cpp", None)  # let the real extension load again


def test_unbuilt_extension_reason_comes_from_the_build_report(monkeypatch, tmp_path):
    """setup.py records why it left an extension out (udd_fast/_build_report.json); the import
    failure then carries that reason."""
    report = tmp_path / "_build_report.json"
    monkeypatch.setattr(backend, "BUILD_REPORT", report)
    monkeypatch.setitem(sys.modules, "udd_fast._C", None)  # makes `import udd_fast._C` raise
    try:
        for text, want in (('{"udd_fast._C": {"built": false, "reason": "the build failed: CompileError: boom"}}',
                            "udd_fast._C was not built: the build failed: CompileError: boom"),
                           ("{not json", "import failed: ModuleNotFoundError")):  # unreadable: the import error alone
            report.write_text(text)
            backend._modules.pop("cpp", None)
            backend._errors.pop("cpp", None)
            backend._warned.discard("cpp")
            with pytest.warns(RuntimeWarning, match=re.escape(want.removeprefix("import failed: "))):
                live, why = ops.available_backends(reasons=True)["cpp"]
            assert not live and want in why
        assert "not built" not in why
    finally:
        monkeypatch.undo()
        backend._modules.pop("cpp", None)  # let the real extension load again
        backend._errors.pop("cpp", None)


def test_kernels_package_is_importable():
    if not ops.available_backends(reasons=True)["triton"][0] and "triton" in backend._errors:
        pytest.skip(f"triton not importable: {backend._errors['triton']}")
    try:
        import triton  # noqa: F401
    except ImportError as e:
        pytest.skip(f"triton not installed: {e}")
    mod = backend._import_kernels()
    assert sys.modules["udd_fast.kernels"] is mod
    assert callable(mod.crop_resize_forward) and callable(mod.diff_augment_backward)
