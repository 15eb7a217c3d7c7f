"""Every Triton kernel variant udd_fast.ops can launch compiles for Hopper (sm_90) and Ampere (sm_80)
on this machine, GPU or not: bench/compile_report.py records the launchers' real arguments on CPU
tensors, lets Triton's binder specialize them for a CUDA target (dtypes, constexprs, pointer
alignment, integers divisible by 16 or equal to 1) and compiles each with triton.compile and the
bundled ptxas. No variant may spill registers, beyond a few bytes in float64 (a single K-wide tile
once spilled up to 60 KB per thread in cfc_loss at K = 1000; response_map's 28 x 28 map at 224 px
up to 584 bytes before its launcher gave large maps more warps). The default matrix covers every
kernel and every constexpr value, and the shapes of 64, 128 and 224 px images; the exhaustive one
(every strategy x dtype x channels, up to an hour on 2 cores) is marked slow."""
import json
import os
import re
import subprocess
import sys

import pytest

from helpers import LARGE_SIDES, REPO

pytestmark = [pytest.mark.triton, pytest.mark.integration]
ARCHS = ("sm_90", "sm_80")


def _triton_or_skip():
    try:
        import triton  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas
    except ImportError as e:
        pytest.skip(f"Triton with its NVIDIA backend is not installed: {e}")
    try:
        ptxas = get_ptxas(90).path
    except Exception as e:  # no bundled or configured ptxas
        pytest.skip(f"no ptxas for Triton: {e}")
    if not os.path.exists(ptxas):
        pytest.skip(f"Triton's bundled ptxas is missing ({ptxas})")


def _compile(tmp_path, *extra):
    """Every variant for sm_90 and sm_80, one process per arch side by side (each compile is
    single-threaded: on 2 cores the pair takes 50 s where one process for both took 81 s, idle)."""
    _triton_or_skip()
    env = dict(os.environ, TRITON_INTERPRET="0")
    procs = {}
    for arch in (90, 80):
        out = tmp_path / f"compile-sm{arch}.json"
        procs[out] = subprocess.Popen([sys.executable, str(REPO / "bench" / "compile_report.py"), "--only", "triton",
                                       "--quiet", "--arch", str(arch), "--json", str(out), *extra], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = []
    for out, proc in procs.items():
        stdout, stderr = proc.communicate()
        assert out.exists(), f"compile_report.py crashed:\n{stdout[-3000:]}\n{stderr[-3000:]}"
        results += json.loads(out.read_text())["triton"]["results"]
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("triton_compile"))


def _launched_kernels():
    """Names of the kernels the launchers in kernels/*.py start (`name[grid](...)`)."""
    names = set()
    for path in (REPO / "kernels").glob("*.py"):
        names |= set(re.findall(r"^\s+(_\w+)\[", path.read_text(), flags=re.M))
    return names


def _failures(results):
    return [f"{r['arch']} {r['kernel']} ({r['cases'][0]}): {r['error'][:400]}" for r in results if not r["ok"]]


def test_every_variant_compiles(results):
    assert results and not _failures(results), "\n".join(_failures(results))


def test_every_kernel_and_constexpr_value_is_covered(results):
    want = _launched_kernels()
    assert len(want) >= 9, want  # crop x2, augment x3, response, region, cfc x2
    for arch in ARCHS:
        got = [r for r in results if r["arch"] == arch]
        by_kernel = {k: [r for r in got if r["kernel"] == k] for k in want}
        assert not [k for k, rs in by_kernel.items() if not rs], f"{arch}: kernels never compiled"
        for kernel, rs in by_kernel.items():
            ptrs = {t for r in rs for t in r["signature"].values() if t[0] == "*"}
            assert {"*fp32", "*fp16", "*bf16", "*fp64"} <= ptrs, (arch, kernel, ptrs)
            ints = set().union(*({n for n, t in r["signature"].items() if t[0] == "i"} | set(r["ones"]) for r in rs))
            ones = set().union(*(r["ones"] for r in rs))
            assert ints <= ones, f"{arch} {kernel}: integer arguments never equal to 1: {ints - ones}"
            if "total" in ints:
                assert any(r["signature"].get("total") == "i64" for r in rs), f"{arch} {kernel}: no 64-bit count"
            unaligned = [r for r in rs
                         if {n for n, t in r["signature"].items() if t[0] == "*"} - set(r["divisible_by_16"])]
            assert unaligned, f"{arch} {kernel}: no variant with an unaligned pointer"
        aug = [r for r in got if r["kernel"] in ("_diff_augment_fwd", "_diff_augment_scatter")]
        for name, values in (("C", {"1", "3"}), ("DO_FLIP", {"True", "False"}), ("CUTOUT", {"True", "False"}),
                             ("BILINEAR", {"True", "False"}), ("NOPS", {"0", "1", "2", "3"}),
                             ("OP0", {"0", "1", "2"}), ("OP1", {"0", "1", "2"}), ("OP2", {"0", "1", "2"})):
            for kernel in ("_diff_augment_fwd", "_diff_augment_scatter"):
                seen = {r["constexprs"][name] for r in aug if r["kernel"] == kernel}
                assert values <= seen, (arch, kernel, name, seen)
        assert {"True", "False"} <= {r["constexprs"]["COLOR"] for r in aug if r["kernel"] == "_diff_augment_fwd"}
        for kernel in ("_cfc_fwd", "_cfc_bwd"):
            ks = {r["constexprs"]["K"] for r in got if r["kernel"] == kernel}
            assert {"1", "10", "100", "1000"} <= ks, (arch, kernel, ks)


def test_large_sides_reuse_the_32px_variants_where_no_constexpr_follows_the_side(results):
    """Evidence that crop_resize, diff_augment and region_mask compile nothing new for 64, 128 and
    224 px: their sizes are runtime integers, which the JIT specializes only by divisibility by 16
    (or == 1), and these sides, their tiles, cutouts and element counts are multiples of 16 as
    32 px's are. So every launch of theirs at those sides binds to a variant that a 32 px launch
    compiled too (the report merges launches of one specialization into one variant)."""
    for arch in ARCHS:
        got = [r for r in results if r["arch"] == arch]
        for op in ("crop_resize", "diff_augment", "region_mask"):
            for side in LARGE_SIDES:
                at_side = [r for r in got if r["op"] == op and any(f"{side}x{side}" in c for c in r["cases"])]
                assert at_side, f"{arch} {op}: no launch at {side} px in the matrix"
                alone = [(r["kernel"], r["cases"]) for r in at_side if not any("32x32" in c for c in r["cases"])]
                assert not alone, f"{arch} {op} at {side} px: variants no 32 px launch has: {alone}"


def test_large_sides_compile_with_the_meta_parameters_their_launchers_pick(results):
    """What the networks at 64-224 px do change: response_map's BLOCK_P (the proxy's 4x4 and 3x3
    maps: 16, as at 32 px; ConvNet-3's side/8 map: 64, 256 cells at 128 px, 1024 at 224 px, where the
    launcher takes 16 warps) and cfc_loss's (K, D) (ConvNet by resolution: 2048 and 1152;
    ResNetAP-10: 512; ConvNet-3: 8192, 32768, 100352; Tiny-ImageNet's K = 200), each compiled
    (without spills: test_no_variant_spills_registers)."""
    widths = {("10", d) for d in ("2048", "1152", "512", "8192", "32768", "100352")}
    widths |= {("100", "512"), ("100", "1152"), ("200", "2048"), ("100", "100352"), ("1000", "100352")}
    for arch in ARCHS:
        got = [r for r in results if r["arch"] == arch and r["ok"]]
        blocks = {r["constexprs"]["BLOCK_P"] for r in got if r["kernel"] == "_response_map_fwd"}
        assert {"16", "64", "256", "1024"} <= blocks, (arch, blocks)
        for kernel in ("_cfc_fwd", "_cfc_bwd"):
            seen = {(r["constexprs"]["K"], r["constexprs"]["D"]) for r in got if r["kernel"] == kernel}
            assert widths <= seen, (arch, kernel, widths - seen)
        warps = {r["num_warps"] for r in got
                 if r["kernel"] == "_response_map_fwd" and r["constexprs"]["BLOCK_P"] == "1024"}
        assert warps == {16}, (arch, warps)


# float64 (the tests' precision, no GPU hot path): ptxas may keep a value on the stack across its
# double-precision division and trig subroutine calls; the exhaustive run found that in 22 of 6654
# variants (diff_augment with a rotation), at most 8 + 20 bytes. Every other variant: none.
FP64_SPILL_BYTES = 32


def _spill_bound(r):
    return FP64_SPILL_BYTES if r["constexprs"].get("ACC") == "fp64" else 0


def test_no_variant_spills_registers(results):
    spills = [f"{r['arch']} {r['kernel']} ({r['cases'][0]}): {r['regs']} registers, spill stores/loads "
              f"{r['spill_stores']}/{r['spill_loads']} bytes" for r in results
              if r["ok"] and r["spill_stores"] + r["spill_loads"] > _spill_bound(r)]
    assert not spills, "\n".join(spills)


@pytest.mark.slow
def test_exhaustive_matrix_compiles_without_spills(tmp_path):
    """Every strategy (flags x ordered ops) x dtype x channels x size, every class count and width."""
    results = _compile(tmp_path, "--full")
    assert not _failures(results), "\n".join(_failures(results))
    test_no_variant_spills_registers(results)
