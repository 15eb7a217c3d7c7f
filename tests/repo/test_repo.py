"""The repository's promises: CI runs the README's own test command."""
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO


def _fenced_blocks(text):
    blocks, cur = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if cur is None:
                cur = []
            else:
                blocks.append("\n".join(cur).strip())
                cur = None
        elif cur is not None:
            cur.append(line)
    return blocks


def test_ci_runs_the_readme_test_command():
    """The README's test block (making a venv, then the test command) stands in .ci/run line for line,
    in order, before anything installs Triton or a browser."""
    readme = (REPO / "README.md").read_text()
    test_cmds = [b for b in _fenced_blocks(readme) if "pytest" in b]
    assert len(test_cmds) == 1, test_cmds
    lines = test_cmds[0].splitlines()
    assert lines[0].startswith("python3 -m venv "), lines  # a fresh venv, as a new user is advised
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    at = [ci.index(line) for line in lines]  # ValueError: a line of the README that CI does not run
    assert at == list(range(at[0], at[0] + len(lines))), at
    commands = [line for line in ci if not line.lstrip().startswith("#")]  # comments may name anything
    before, after = "\n".join(commands[:commands.index(lines[0])]), "\n".join(commands[commands.index(lines[-1]):])
    assert "triton" not in before.lower() and "chromium" not in before, "step 1 has no Triton and no browser"
    assert "pip install triton==" in after and '-m "(triton or browser) and not slow"' in after
    assert "make_cifar10.py" in "\n".join(ci)


@pytest.mark.integration
def test_a_skip_for_want_of_what_ci_installs_later_must_carry_its_marker(tmp_path):
    """.ci/run's first step has no Triton and no browser; its second step installs them and runs only
    the tests marked triton or browser. A test that skips for want of one without the marker would
    never run in CI, so conftest turns that skip into a failure; likewise for a GPU (marker gpu, which
    the GPU session selects) and IDC's code (marker idc)."""
    (tmp_path / "test_needs.py").write_text(textwrap.dedent('''
        import pytest
        def test_unmarked():
            pytest.skip("Triton is not installed")
        @pytest.mark.triton
        def test_marked():
            pytest.skip("Triton is not installed")
        def test_no_browser_unmarked():
            pytest.skip("no headless browser installed")
        def test_no_gpu_unmarked():
            pytest.skip("no CUDA device here")
        def test_other():
            pytest.skip("checked once, by design")
    '''))
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "conftest",
                        "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_needs.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    out = p.stdout + p.stderr
    for name in ("test_unmarked", "test_no_browser_unmarked", "test_no_gpu_unmarked"):
        assert f"FAILED test_needs.py::{name}" in out, out
    assert "3 failed, 2 skipped" in out, out
