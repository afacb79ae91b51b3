"""Every scene's Config declares what it accepts, and the CLI refuses anything else in one line, with exit
status 2 and nothing written. The scenes are found by walking scenes/, so a scene added later is covered too."""
import math
import os
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest

from engine.cli import main
from engine.errors import ConfigError
from engine.scene import Choices, Range, apply_overrides, describe_config, field_constraints, load_scene

ROOT = Path(__file__).resolve().parents[2]
SCENES = sorted(p for p in (ROOT / "scenes").glob("*.py") if not p.stem.startswith("_"))


def _base(tp):
    """The plain type under Annotated/Optional: float, int, str, bool, tuple[...]."""
    tp = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
    if typing.get_origin(tp) is typing.Union:
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def _numeric(tp) -> bool:
    tp = _base(tp)
    if typing.get_origin(tp) in (tuple, list):
        return all(a in (int, float) for a in typing.get_args(tp) if a is not Ellipsis) and bool(typing.get_args(tp))
    return tp in (int, float)


def _text(value, tp) -> str:
    """``value`` written as --set text for a field of type ``tp`` (tuples repeat it for every item)."""
    tp = _base(tp)
    if typing.get_origin(tp) is tuple:
        n = len([a for a in typing.get_args(tp) if a is not Ellipsis]) or 1
        item = typing.get_args(tp)[0]
        return ",".join([_text(value, item)] * n)
    if tp is int:
        return str(int(value))
    return repr(float(value)) if not math.isnan(value) else "nan"


def bad_values(cls) -> list[tuple[str, str]]:
    """(field, text) pairs the Config must refuse: each declared Range's edges and NaN, a value outside each
    Choices, and a word where a number belongs."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for name, rules in field_constraints(cls).items():
        tp = _base(hints[name])
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
        for rule in rules:
            if isinstance(rule, Range):
                for v in rule.outside():
                    if item is int and (math.isnan(v) or rule.ok(int(v))):
                        continue
                    out.append((name, _text(v, tp)))
            else:
                wrong = 987654 if all(isinstance(v, int) for v in rule.values) else "not-a-choice"
                assert wrong not in rule.values
                out.append((name, str(wrong)))
        if _numeric(hints[name]):
            out.append((name, "abc"))
    return out


def _scene_id(p):
    return p.stem


@pytest.mark.parametrize("path", SCENES, ids=_scene_id)
def test_every_numeric_field_declares_its_range(path):
    """A number without a declared range is how tracebacks got in (res=-8, cells_per_thickness=0): every int,
    float or tuple-of-numbers field states its Range (or Choices)."""
    cfg = load_scene(path).Config
    hints = typing.get_type_hints(cfg, include_extras=True)
    declared = field_constraints(cfg)
    missing = [n for n, tp in hints.items() if _numeric(tp) and n not in declared]
    assert not missing, f"{path.name}: numeric Config fields without a Range/Choices: {', '.join(missing)}"
    apply_overrides(cfg, [])  # the defaults themselves are inside the declared ranges
    text = describe_config(cfg)
    for name, rules in declared.items():  # --help shows each range
        for rule in rules:
            assert rule.describe() in text, (name, rule.describe())


@pytest.mark.parametrize("path", SCENES, ids=_scene_id)
def test_out_of_range_values_are_one_line_exit_2_nothing_written(path, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out (runs/<scene>) would land here
    cases = bad_values(load_scene(path).Config)
    assert cases or not field_constraints(load_scene(path).Config)
    for key, text in cases:
        code = main(["run", str(path), "--set", f"{key}={text}", "--out", str(tmp_path / "out"), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (path.name, key, text, err)
        assert len(err.splitlines()) == 1 and err.startswith("tide: error: ") and key in err, (key, text, err)
        assert "Traceback" not in err
        assert not any(tmp_path.iterdir()), f"{path.name} {key}={text} wrote {list(tmp_path.iterdir())}"


def test_the_listed_cases_from_the_issue_end_as_one_line(tmp_path):
    """A real process: no banner on stderr, no traceback, exit 2, nothing written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for scene, item, says in [("cantilever", "nu=0.5", "nu=0.5 is out of range: must be >= 0 and < 0.5"),
                              ("terrain", "pool_x=abc", "pool_x='abc': expected a float")]:
        res = subprocess.run([sys.executable, "-m", "engine.cli", "run", scene, "--set", item, "--out",
                              str(tmp_path / "o")], capture_output=True, text=True, env=env, cwd=tmp_path,
                             timeout=120)
        assert res.returncode == 2 and res.stderr.strip() == f"tide: error: {says}", res.stderr
        assert "Taichi" not in res.stdout + res.stderr
        assert not any(tmp_path.iterdir())


def test_a_refused_dt_quotes_the_given_value_and_writes_nothing(tmp_path, capsys):
    """dt inside its declared range but far above the CFL limit of this material: refused while building,
    quoting the dt the user gave (not the substep the scene would have taken), before config.json exists."""
    out = tmp_path / "o"
    code = main(["run", "jelly_drop", "--set", "res=16", "--set", "E=2e6", "--set", "dt=0.01", "--out", str(out),
                 "--arch", "cpu", "--precision", "f64"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("tide: error: dt=0.01 s is far above the CFL limit"), err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_fps_and_frames_must_be_positive(tmp_path, capsys):
    for args in (["--fps", "0"], ["--fps", "x"], ["--frames", "-1"]):
        assert main(["run", "jelly_drop", *args, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("tide: error:"), err
    assert not (tmp_path / "o").exists()


@dataclass
class _Cfg:
    n: Annotated[int, Range(ge=1)] = 2
    """Count."""
    x: Annotated[float, Range(gt=0, lt=0.5)] = 0.25
    """Fraction."""
    span: Annotated[tuple[float, float], Range(ge=0, le=1)] = (0.2, 0.8)
    """lo,hi."""
    kind: Annotated[str, Choices("a", "b")] = "a"
    """Kind."""
    free: str = "anything"
    """No rule."""

    def validate(self):
        if self.span[0] >= self.span[1]:
            raise ConfigError("span: lo must be < hi")


@pytest.mark.parametrize("item, message", [
    ("n=0", "n=0 is out of range: must be >= 1"),
    ("x=0.5", "x=0.5 is out of range: must be > 0 and < 0.5"),
    ("x=inf", "x=inf is out of range"),
    ("span=0.5,1.5", "span=0.5,1.5 is out of range: each value must be >= 0 and <= 1"),
    ("kind=c", "kind='c' is not a valid choice: expected one of a, b"),
    ("span=0.9,0.1", "span: lo must be < hi"),  # validate() still runs for checks across fields
])
def test_range_and_choices_messages(item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        apply_overrides(_Cfg, [item])


def test_help_shows_ranges_and_rules_are_not_invented():
    text = describe_config(_Cfg)
    assert "n (int >= 1, default 2)" in text and "x (float > 0 and < 0.5, default 0.25)" in text
    assert "kind ({a|b}, default 'a')" in text and "free (str, default 'anything')" in text
    assert set(field_constraints(_Cfg)) == {"n", "x", "span", "kind"}
    cfg = apply_overrides(_Cfg, ["n=7", "x=0.49", "span=0,1", "kind=b", "free=zz"])
    assert (cfg.n, cfg.x, cfg.span, cfg.kind, cfg.free) == (7, 0.49, (0.0, 1.0), "b", "zz")
