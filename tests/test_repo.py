"""The repository's promises: CI runs the README's own test command."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    readme = (REPO / "README.md").read_text()
    test_cmds = [b for b in _fenced_blocks(readme) if "pytest" in b]
    assert len(test_cmds) == 1, test_cmds
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_cmds[0] in ci
    assert "make_cifar10.py" in "\n".join(ci)
