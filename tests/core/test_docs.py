"""The README stays current: every scene is in its scene table, and .ci/run calls the README's test command."""
from pathlib import Path

from engine import cli

ROOT = Path(__file__).resolve().parents[2]


def test_every_scene_is_listed_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- scenes -->")[1].split("<!-- /scenes -->")[0]
    for path in sorted((ROOT / "scenes").glob("*.py")):
        if path.stem.startswith("_"):
            continue
        assert f"| `{path.stem}` | {cli.scene_summary(path)}" in table, f"{path.stem} missing from README scenes"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/test.sh" in readme.split("## Quick start")[1].split("##")[0]
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
