"""What a sweep runs: every combination of grid values × datasets × seeds, each checked against the scene's
``Config`` (types, then ``validate()``) before any run starts.

A grid is a list of *axes*; the sweep runs their Cartesian product. An axis is a list of settings dicts, so one
axis value can set several linked keys (the co-design table gives diffsim and CMA-ES different iteration counts
for the same compute budget). ``--grid env=ground,ice`` is the axis ``[{"env": "ground"}, {"env": "ice"}]``.
Values stay the text the user gave; ``engine.scene.apply_overrides`` parses them, exactly as ``tide run --set``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, SceneError

__all__ = ["RunSpec", "Plan", "parse_grid", "parse_seeds", "make_plan"]

Axis = list  # list[dict[str, str]]: the values of one grid axis, each a dict of linked settings


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: an ordinary ``tide run`` into ``DIR/runs/<key>``."""

    key: str
    """Folder name, ``key=value,...,seed=S`` (values made filename-safe)."""
    settings: tuple
    """((name, value text), ...) of the grid axes and the dataset, in grid order: the summary's columns."""
    seed: int
    """``tide run --seed`` (and the scene's own ``seed`` option when its Config has one)."""
    overrides: tuple
    """``--set key=value`` items given to ``tide run``: the sweep's --set, then this run's grid values."""


@dataclass
class Plan:
    """The validated runs of a sweep, in a fixed order (grid order, then dataset, then seed)."""

    scene: str
    """What ``tide run`` is given: a name from ``scenes/`` (each node resolves it in its own install) or an
    absolute path."""
    scene_path: Path
    columns: list
    """Setting columns of the summary (grid keys, then ``data``), without ``seed``."""
    runs: list = field(default_factory=list)
    sets: list = field(default_factory=list)
    """The sweep-wide ``--set`` items (not part of the run keys)."""


def _fields(config_cls) -> tuple[list[str], dict]:
    return [f.name for f in dataclasses.fields(config_cls)], typing.get_type_hints(config_cls)


def _split_item(item: str, flag: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"{flag} expects key=value, got {item!r}")
    key, val = item.split("=", 1)
    return key.strip(), val.strip()


def parse_grid(items: list[str], config_cls) -> list[Axis]:
    """``["env=ground,ice", ...]`` -> axes. A list/tuple option separates its values with ';'
    (``--grid target='0.7,0.3;0.2,0.9'``), every other option with ','."""
    names, hints = _fields(config_cls)
    axes: list[Axis] = []
    for item in items:
        key, text = _split_item(item, "--grid")
        if key not in names:
            raise ConfigError(f"unknown option {key!r} in --grid; valid keys: {', '.join(names)}")
        sep = ";" if typing.get_origin(hints[key]) in (tuple, list) else ","
        values = [v.strip() for v in text.split(sep) if v.strip()]
        if not values:
            raise ConfigError(f"--grid {key}= has no values (an empty grid runs nothing)")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {key} lists a value twice: {text}")
        axes.append([{key: v} for v in values])
    return axes


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]."""
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds is empty (an empty sweep runs nothing)")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {text}")
    return seeds


def _slug(value: str) -> str:
    """A filename-safe form of a value; long values keep a hash so two of them cannot collide."""
    s = re.sub(r"[^A-Za-z0-9._+-]+", "_", value).strip("_") or "_"
    if len(s) > 48:
        s = s[:39] + "-" + hashlib.sha1(value.encode()).hexdigest()[:8]
    return s


def datasets(data_dir: str | Path) -> list[Path]:
    """The dataset subfolders of ``data_dir`` (sorted by name, hidden ones skipped)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError(f"--data-dir {root} is not a folder")
    found = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise ConfigError(f"--data-dir {root} has no datasets (expected one subfolder per dataset)")
    return found


def make_plan(scene: str, grid: list | None = None, seeds: list[int] | None = None,
              sets: list[str] | None = None, data_dir: str | Path | None = None) -> Plan:
    """Resolve the scene, expand the grid and validate every run's config. Raises ``ConfigError`` /
    ``SceneError`` (one line) on the first problem; nothing is written and nothing is started.

    ``grid``: axes (lists of settings dicts), or ``--grid`` strings ``"key=v1,v2"``, or a mix.
    """
    from ..cli import SCENES_DIR, resolve_scene
    from ..scene import apply_overrides, load_scene

    path = resolve_scene(scene)
    module = load_scene(path)
    names, _ = _fields(module.Config)
    in_scenes = path.resolve() == (SCENES_DIR / f"{path.stem}.py").resolve()
    scene_ref = path.stem if in_scenes else str(path.resolve())
    seeds = list(seeds) if seeds is not None else [0]
    if not seeds:
        raise ConfigError("--seeds is empty (an empty sweep runs nothing)")
    sets = list(sets or [])
    set_keys = []
    for item in sets:
        key, _ = _split_item(item, "--set")
        if key not in names:
            raise ConfigError(f"unknown option {key!r} in --set; valid keys: {', '.join(names)}")
        set_keys.append(key)
    axes = []
    for item in grid or []:
        axes += parse_grid([item], module.Config) if isinstance(item, str) else [list(item)]
    columns: list[str] = []
    for axis in axes:
        if not axis:
            raise ConfigError("a grid axis has no values (an empty grid runs nothing)")
        keys = list(dict.fromkeys(k for value in axis for k in value))
        for k in keys:
            if k not in names:
                raise ConfigError(f"unknown option {k!r} in --grid; valid keys: {', '.join(names)}")
            if k in columns:
                raise ConfigError(f"--grid sets {k!r} twice")
            if k in set_keys:
                raise ConfigError(f"{k!r} is given by both --grid and --set")
        columns += keys
    if "seed" in columns or "seed" in set_keys:
        raise ConfigError("the scene's seed option is set by --seeds, not --grid/--set")
    data_axis: Axis = [{}]
    if data_dir is not None:
        if "data" not in names:
            raise ConfigError(f"scene {path.stem} has no 'data' option, so --data-dir cannot pass it datasets")
        if "data" in columns or "data" in set_keys:
            raise ConfigError("'data' is given by --data-dir; do not also --grid/--set it")
        data_axis = [{"data": d} for d in datasets(data_dir)]
        columns.append("data")

    plan = Plan(scene=scene_ref, scene_path=path.resolve(), columns=columns, sets=sets)
    checked: dict = {}
    keys_seen: dict = {}
    for combo in itertools.product(*axes, data_axis):
        shown, given = [], []
        for part in combo:
            for k, v in part.items():
                if isinstance(v, Path):  # a dataset: the run gets its absolute path, the key its folder name
                    shown.append((k, v.name))
                    given.append(f"{k}={v.resolve()}")
                else:
                    shown.append((k, str(v)))
                    given.append(f"{k}={v}")
        for seed in seeds:
            overrides = tuple(sets + given + ([f"seed={seed}"] if "seed" in names else []))
            key = ",".join([f"{k}={_slug(v)}" for k, v in shown] + [f"seed={seed}"])
            if key in keys_seen:
                raise ConfigError(f"two runs map to the folder {key!r}: make the grid values differ in letters or "
                                  "digits")
            keys_seen[key] = True
            if overrides not in checked:
                try:
                    apply_overrides(module.Config, list(overrides))
                except (ConfigError, SceneError) as exc:
                    raise ConfigError(f"run {key}: {exc}") from None
                except (TypeError, ValueError) as exc:  # a validate() that raises a plain error
                    raise ConfigError(f"run {key}: {exc}") from None
                checked[overrides] = True
            plan.runs.append(RunSpec(key=key, settings=tuple(shown), seed=int(seed), overrides=overrides))
    return plan
