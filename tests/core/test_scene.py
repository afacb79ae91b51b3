"""Config parsing for --set: types, Literal choices, tuples, Optional, and docstrings read from the source."""
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import pytest

from engine.errors import ConfigError
from engine.scene import Range, apply_overrides, describe_config, field_docs


@dataclass
class Cfg:
    n: int = 3
    """How many."""
    dt: float = 1e-3
    """Substep in seconds."""
    flag: bool = False
    """A switch."""
    env: Literal["ground", "ice"] = "ground"
    """Terrain preset."""
    size: tuple[float, float] = (1.0, 2.0)
    """Width and height."""
    name: Optional[str] = None
    """A label, or none."""


def test_types_parse():
    cfg = apply_overrides(Cfg, ["n=7", "dt=2.5e-4", "flag=yes", "env=ice", "size=3,4.5", "name=abc"])
    assert (cfg.n, cfg.dt, cfg.flag, cfg.env, cfg.size, cfg.name) == (7, 2.5e-4, True, "ice", (3.0, 4.5), "abc")
    assert apply_overrides(Cfg, ["name=none"]).name is None


@pytest.mark.parametrize("item, message", [
    ("n=2.5", "n='2.5': expected an int"),
    ("flag=maybe", "expected a bool"),
    ("env=lava", "expected one of ground, ice"),
    ("size=1,2,3", "expected 2 comma-separated values"),
    ("zz=1", "unknown option 'zz'; valid keys: n, dt, flag, env, size, name"),
])
def test_errors_name_the_problem(item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(Cfg, [item])


def test_base_dict_then_overrides():
    cfg = apply_overrides(Cfg, ["n=1"], base={"n": 5, "size": [2.0, 2.0], "stale_key": 1})
    assert cfg.n == 1 and cfg.size == (2.0, 2.0)


def test_docs_from_source():
    assert field_docs(Cfg)["dt"] == "Substep in seconds."
    text = describe_config(Cfg)
    assert "env ({ground|ice}, default 'ground')" in text and "Terrain preset." in text


@dataclass
class _Shared:
    steps: Annotated[int, Range(ge=1)] = 10
    """Iterations."""
    seed: int = 0
    """Seed."""


@dataclass
class _Child(_Shared):
    steps: Annotated[int, Range(ge=1)] = 50
    width: Annotated[float, Range(gt=0)] = 1.0
    """Width in metres."""


def test_inherited_fields_keep_their_docs_and_ranges():
    # scenes that share a base Config (the avatars) declare the shared fields once: docs and ranges come through
    # the MRO, a redeclared field keeps the base's docstring and takes the subclass's default
    assert field_docs(_Child) == {"steps": "Iterations.", "seed": "Seed.", "width": "Width in metres."}
    text = describe_config(_Child)
    assert "steps (int >= 1, default 50)" in text and "Iterations." in text and "Seed." in text
    with pytest.raises(ConfigError, match="steps=0 is out of range"):
        apply_overrides(_Child, ["steps=0"])
    assert apply_overrides(_Child, ["seed=3", "width=2"]).seed == 3
