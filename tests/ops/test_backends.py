"""Backend selection of udd_fast.ops: env var and setter, auto's choice, clear errors for missing
backends, import failures reported once, the Triton kernels importable as udd_fast.kernels, every
backend on diff_augment's one parameter layout, and (in CI) every backend that should be live here
is."""
import math
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

from helpers import REPO, ops_device
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


def _in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def test_ci_has_the_extensions_this_machine_should_have():
    """In CI (CI=true) an extension that should be live but is not fails the run: the C++ extension,
    and on a GPU machine the CUDA one."""
    if not _in_ci():
        pytest.skip("only enforced in CI (env CI=true)")
    detail = ops.available_backends(reasons=True)
    expected = ["cpp"] + (["cuda"] if torch.cuda.is_available() else [])
    missing = {name: detail[name][1] for name in expected if not detail[name][0]}
    assert not missing, f"backends that should be live are not: {missing}"


@pytest.mark.triton
def test_ci_with_triton_installed_has_the_triton_backend():
    """Where Triton is installed (.ci/run's second step installs it), its backend must be live: in
    CI, the kernels importable and runnable (interpreted on a CPU machine)."""
    if not _in_ci():
        pytest.skip("only enforced in CI (env CI=true)")
    try:
        import triton  # noqa: F401
    except ImportError as e:
        pytest.skip(f"Triton is not installed in this environment ({e}); .ci/run's second step installs it")
    live, why = ops.available_backends(reasons=True)["triton"]
    assert live, f"Triton is installed but its backend is not live: {why}"


# diff_augment's parameter layout: augment.py defines it; every backend must read the same columns
# and take the same op codes.
LAYOUT = ("FLIP", "BRIGHT", "SAT", "CONTRAST", "TX", "TY", "CUT_X", "CUT_Y", "SCALE_X", "SCALE_Y", "ROT", "OP",
          "NUM_PARAMS", "CROP", "SCALE", "ROTATE")


def _python_layout():
    return {name: getattr(augment, name) for name in LAYOUT}


def test_python_layout_is_twelve_columns_and_the_op_codes():
    layout = _python_layout()
    assert [layout[n] for n in LAYOUT[:12]] == list(range(12)) and layout["NUM_PARAMS"] == 12
    assert augment.OP_CODES == {"crop": layout["CROP"], "scale": layout["SCALE"], "rotate": layout["ROTATE"]}


def test_the_c_headers_spell_the_python_layout():
    """csrc/common.h holds the layout for the C++ and the CUDA kernels, csrc/ops.h binds it by name as
    aug_layout() (read here, so that the CUDA side is checked without a GPU or a built extension;
    test_compile_cuda.py compiles it)."""
    text = (REPO / "csrc" / "common.h").read_text()
    values = {name: int(v) for name, v in re.findall(r"\b([A-Z][A-Z_]*) = (-?\d+)\b", text)}
    assert {n: values.get(n) for n in LAYOUT} == _python_layout()
    bound = re.findall(r'\{"(\w+)", (\w+)\}', (REPO / "csrc" / "ops.h").read_text())
    assert sorted(bound) == sorted((n, n) for n in LAYOUT)


@pytest.mark.parametrize("name", ["cpp", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_each_extension_uses_the_python_layout(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an extension that is not built is reported as a warning
        mod = backend._load(name)
    if mod is None:
        pytest.skip(f"backend {name!r} cannot be imported here: {backend.load_error(name)}")
    assert mod.aug_layout() == _python_layout()


@pytest.mark.triton
def test_the_triton_kernels_use_the_python_layout():
    if not ops.available_backends()["triton"]:
        pytest.skip("triton not live")
    from udd_fast.kernels import diff_augment as k  # importable without installing (ops' shim)

    assert k.aug is augment  # the kernels read augment's names, no copy of their own
    assert k.__file__.startswith(str(REPO / "kernels"))


def _cut(x, row, col):
    """x with the cutout square centred at (row, col) set to 0 (augment.cutout_size, clipped)."""
    out, s = x.clone(), augment.cutout_size(x.shape[-1])
    out[..., max(0, row - s // 2):row - s // 2 + s, max(0, col - s // 2):col - s // 2 + s] = 0
    return out


def _shift(x, di, dj):
    """out[..., i, j] = x[..., i + di, j + dj], 0 outside (crop's translation, di, dj >= 0)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., :h - di, :w - dj] = x[..., di:, dj:]
    return out


# (strategy, {column: value}, what the augmented image must be): each column set alone in a row
# that is otherwise neutral, with an effect written out from the method (not from the code).
LAYOUT_CASES = [
    ("flip", {"FLIP": 1.0}, lambda x: x.flip(3)),
    ("color", {"BRIGHT": 0.25}, lambda x: x + 0.25),
    ("color", {"SAT": 0.0}, lambda x: x.mean(1, keepdim=True).expand_as(x)),
    ("color", {"CONTRAST": 0.0}, lambda x: x.mean((1, 2, 3), keepdim=True).expand_as(x)),
    ("crop", {"TX": 2.0}, lambda x: _shift(x, 2, 0)),
    ("crop", {"TY": 3.0}, lambda x: _shift(x, 0, 3)),
    ("cutout", {"CUT_X": 2.0, "CUT_Y": 5.0}, lambda x: _cut(x, 2, 5)),
    ("scale", {"SCALE_X": -1.0}, lambda x: x.flip(3)),  # a mirror: exact pixel centres
    ("scale", {"SCALE_Y": -1.0}, lambda x: x.flip(2)),
    ("rotate", {"ROT": math.pi}, lambda x: x.flip(2, 3)),
    ("crop_scale_rotate", {"OP": 1.0, "SCALE_Y": -1.0}, lambda x: x.flip(2)),  # OP picks scale, the 2nd op
    ("crop_scale_rotate", {"OP": 2.0, "ROT": math.pi}, lambda x: x.flip(2, 3)),
]
NEUTRAL = {"SAT": 1.0, "CONTRAST": 1.0, "CUT_X": -100.0, "CUT_Y": -100.0, "SCALE_X": 1.0, "SCALE_Y": 1.0}


@pytest.mark.parametrize("strategy,columns,want", LAYOUT_CASES, ids=[
    f"{s}-{'-'.join(c)}" for s, c, _ in LAYOUT_CASES])
def test_every_backend_reads_the_python_layout(ops_backend, strategy, columns, want):
    """Every backend (torch, cpp, triton, cuda: see conftest's ops_backend) on diff_augment with a
    row of augment's layout: sample 0 takes a row with the named columns set, sample 1 a neutral
    row (unchanged), so a backend that read another column or row stride would fail."""
    device = ops_device(ops_backend)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
    params = torch.zeros(2, augment.NUM_PARAMS)
    for row, values in ((0, NEUTRAL | columns), (1, NEUTRAL)):
        for name, v in values.items():
            params[row, getattr(augment, name)] = v
    out = ops.diff_augment(x, params.to(device), strategy, torch.tensor([0, 1], device=device))
    torch.testing.assert_close(out[:1], want(x[:1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:], x[1:], atol=1e-5, rtol=1e-5)


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


@pytest.mark.integration
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_cuda_prefers_triton_then_cuda():
    live = ops.available_backends()
    want = "triton" if live["triton"] else "cuda" if live["cuda"] else "torch"
    with ops.use_backend("auto"):
        assert ops.resolve(torch.zeros(1, device="cuda")) == want


@pytest.mark.triton
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


def test_missing_extension_is_reported_once_and_auto_falls_back(monkeypatch, fresh_backends):
    """Simulate a failed build: importing udd_fast._C fails; auto warns once with the import error
    and runs the reference; an explicit request raises."""
    monkeypatch.setitem(sys.modules, "udd_fast._C", None)  # makes `import udd_fast._C` raise
    images, src, boxes = torch.rand(2, 3, 6, 6), torch.tensor([0, 1]), torch.tensor([[0, 0, 3, 3], [3, 3, 6, 6]])
    with ops.use_backend("auto"):
        with pytest.warns(RuntimeWarning, match=r"backend 'cpp' is unavailable \(ModuleNotFoundError|ImportError"):
            assert ops.resolve(images) == "torch"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # reported once, not again
            out = ops.crop_resize(images, src, boxes, (6, 6))
    torch.testing.assert_close(out, crop_resize_ref(images, src, boxes, (6, 6)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other backends missing here are reported too
        assert ops.available_backends(reasons=True)["cpp"][0] is False
    with pytest.raises(RuntimeError, match="'cpp' is not available"):
        ops.set_backend("cpp")


def test_every_missing_backend_has_its_reason_whatever_was_tried_before(monkeypatch, fresh_backends):
    """available_backends(reasons=True) answers for every backend after any order of earlier imports
    (it once raised KeyError for a Triton import that an earlier test had tried), and a missing
    Triton is reported as not installed, not as a matter of the interpreter."""
    monkeypatch.setitem(sys.modules, "triton", None)  # as if Triton were not installed
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for first in ("triton", "cpp", "cuda"):
            backend._load(first)
            detail = ops.available_backends(reasons=True)
            assert set(detail) == {"torch", "cpp", "cuda", "triton"}
            live, why = detail["triton"]
            assert not live and why.startswith("Triton is not installed"), why
    assert ops.why_unavailable("triton", torch.device("cpu")).startswith("Triton is not installed")


def test_unbuilt_extension_reason_comes_from_the_build_report(monkeypatch, tmp_path, fresh_backends):
    """setup.py records why it left an extension out (udd_fast/_build_report.json); the import
    failure then carries that reason."""
    report = tmp_path / "_build_report.json"
    monkeypatch.setattr(backend, "BUILD_REPORT", report)
    monkeypatch.setitem(sys.modules, "udd_fast._C", None)  # makes `import udd_fast._C` raise
    for text, want in (('{"udd_fast._C": {"built": false, "reason": "the build failed: CompileError: boom"}}',
                        "udd_fast._C was not built: the build failed: CompileError: boom"),
                       ("{not json", "import failed: ModuleNotFoundError")):  # unreadable: the import error alone
        report.write_text(text)
        backend._records["cpp"] = backend.Record()  # this fixture's fresh record: try the import again
        with pytest.warns(RuntimeWarning, match=re.escape(want.removeprefix("import failed: "))):
            why = ops.why_unavailable("cpp")
        assert why is not None and want in why
    assert "not built" not in why


@pytest.mark.triton
def test_kernels_package_is_importable():
    if not ops.available_backends(reasons=True)["triton"][0] and backend.load_error("triton"):
        pytest.skip(f"triton not importable: {backend.load_error('triton')}")
    try:
        import triton  # noqa: F401
    except ImportError as e:
        pytest.skip(f"triton not installed: {e}")
    mod = backend._import_kernels()
    assert sys.modules["udd_fast.kernels"] is mod
    assert callable(mod.crop_resize_forward) and callable(mod.diff_augment_backward)


@pytest.mark.integration
def test_ops_does_not_import_the_rest_of_the_package():
    """udd_fast.ops depends on backend.py, its op modules and augment's layout only: no cycle through
    regions.py (which calls the ops) or cfc.py/decode.py."""
    code = "import sys, udd_fast.ops; print(' '.join(sorted(m for m in sys.modules if m.startswith('udd_fast'))))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    loaded = set(out.split())
    assert not loaded & {"udd_fast.region_search", "udd_fast.decode", "udd_fast.engine"}, loaded
