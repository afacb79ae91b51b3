"""Every Python block of the README runs as written, in a fresh process (so a block cannot lean on names from
another one). Blocks are found by extraction, so sections added later are covered too."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python fenced block."""
    out = []
    for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M):
        out.append((text[:m.start()].count("\n") + 1, m.group(1)))
    return out


BLOCKS = python_blocks((ROOT / "README.md").read_text())


def test_blocks_are_found():
    assert len(BLOCKS) >= 3
    assert python_blocks("x\n```python\nprint(1)\n```\n```bash\nls\n```\n") == [(2, "print(1)\n")]


@pytest.mark.slow
@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_block_runs(line, code, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TIDE_ARCH": os.environ.get("TIDE_TEST_ARCH", "cpu"),
           "ENABLE_TAICHI_HEADER_PRINT": "0"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, f"README.md line {line} failed:\n{res.stderr[-3000:]}"
