"""The scene contract and the tools the runner uses on it.

A scene script defines:

* ``Config``: a dataclass. Each field has a type annotation, a default and a docstring (a string literal on the
  line after it), which becomes ``tide run SCENE.py --help``.
* ``Scene(config)``: with ``build()``, ``step(frame)``, ``render() -> (H, W, 3) uint8``, ``metrics() -> dict``,
  and optionally ``exports() -> {filename: object}`` and ``optimize(run)`` for learning scenes.

Scenes never parse argv, write files or draw progress bars; the runner (``engine.cli``) does.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import sys
import textwrap
import typing
from pathlib import Path

from .errors import ConfigError, SceneError

__all__ = ["load_scene", "field_docs", "describe_config", "apply_overrides", "config_to_dict", "parse_value"]


def load_scene(path: str | Path):
    """Import a scene script and check it has ``Config`` (a dataclass) and ``Scene``. Returns the module."""
    path = Path(path)
    if not path.is_file():
        raise SceneError(f"scene not found: {path}")
    try:
        source = path.read_text()
        ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise SceneError(f"cannot parse scene {path}: {exc.msg} (line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneError(f"cannot read scene {path}: {exc}") from None
    name = f"tide_scene_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any import-time failure of user code is a scene error
        raise SceneError(f"scene {path} failed to import: {type(exc).__name__}: {exc}") from None
    cfg = getattr(module, "Config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise SceneError(f"scene {path} has no Config dataclass")
    if not inspect.isclass(getattr(module, "Scene", None)):
        raise SceneError(f"scene {path} has no Scene class")
    return module


def field_docs(cls) -> dict[str, str]:
    """Docstrings written under dataclass fields (nerfstudio style), read from the source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body
    for a, b in zip(body, body[1:]):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "{" + "|".join(str(v) for v in typing.get_args(tp)) + "}"
    if origin in (tuple, list):
        args = typing.get_args(tp)
        return f"{origin.__name__}[{_type_name(args[0])}]" if args else origin.__name__
    return getattr(tp, "__name__", str(tp))


def describe_config(cls) -> str:
    """Human-readable list of a Config's fields: name, type, default and docstring."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        lines.append(f"  {f.name} ({_type_name(hints[f.name])}, default {default!r})")
        if f.name in docs:
            lines.append(f"      {docs[f.name]}")
    return "\n".join(lines)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(text: str, tp, key: str = "value"):
    """Parse ``text`` as type ``tp`` (int, float, bool, str, Literal, tuple/list of those, Optional)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        if text.lower() in ("none", "null") and len(inner) < len(args):
            return None
        return parse_value(text, inner[0], key)
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == text:
                return choice
        raise ConfigError(f"{key}={text!r}: expected one of {', '.join(map(str, args))}")
    if origin in (tuple, list):
        item = args[0] if args else str
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        values = [parse_value(p.strip(), item, key) for p in parts]
        if origin is tuple and len(args) > 1 and args[-1] is not Ellipsis:
            if len(values) != len(args):
                raise ConfigError(f"{key}={text!r}: expected {len(args)} comma-separated values")
            values = [parse_value(p.strip(), t, key) for p, t in zip(parts, args)]
        return origin(values)
    if tp is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{key}={text!r}: expected a bool (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected an int") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a float") from None
    if tp is str:
        return text
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def apply_overrides(cls, overrides: list[str] | dict | None = None, base: dict | None = None):
    """Build a ``cls`` instance from defaults, then ``base`` (a resolved dict), then ``key=value`` overrides.

    Unknown keys and badly typed values raise ``ConfigError`` naming the valid keys.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict = {}
    for key, val in (base or {}).items():
        if key in names:
            values[key] = tuple(val) if isinstance(val, list) and typing.get_origin(hints[key]) is tuple else val
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in (overrides or [])]
    for key, raw in items:
        if key not in names:
            raise ConfigError(f"unknown option {key!r}; valid keys: {', '.join(names)}")
        values[key] = parse_value(raw, hints[key], key) if isinstance(raw, str) else raw
    try:
        cfg = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
    return cfg


def _split(item: str):
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, val = item.split("=", 1)
    return key.strip(), val.strip()


def config_to_dict(cfg) -> dict:
    """JSON-ready dict of a config (tuples become lists)."""
    return dataclasses.asdict(cfg)
