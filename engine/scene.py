"""The scene contract and the tools the runner uses on it.

A scene script defines:

* ``Config``: a dataclass. Each field has a type annotation, a default and a docstring (a string literal on the
  line after it), which becomes ``tide run SCENE.py --help``. A field states its valid values in its annotation,
  ``E: Annotated[float, Range(gt=0)] = 1e5`` or ``material: Annotated[str, Choices("elastic", "sand")] = "sand"``;
  ``apply_overrides`` checks them before anything is built and ``--help`` shows them. Checks between fields
  (``lo < hi``) go in an optional ``validate()`` method raising ``ConfigError``.
* ``Scene(config)``: with ``build()``, ``step(frame)``, ``render() -> (H, W, 3) uint8``, ``metrics() -> dict``,
  and optionally ``exports() -> {filename: object}`` and ``optimize(run)`` for learning scenes.

Scenes never parse argv, write files or draw progress bars; the runner (``engine.cli``) does.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import math
import sys
import textwrap
import typing
from pathlib import Path

from .errors import ConfigError, SceneError

__all__ = ["load_scene", "field_docs", "describe_config", "apply_overrides", "config_to_dict", "parse_value",
           "Range", "Choices", "field_constraints"]


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid interval of a numeric Config field, or of every item of a tuple field.

    Give any of ``gt`` (>), ``ge`` (>=), ``lt`` (<), ``le`` (<=). NaN and infinity are always refused.
    Use in the annotation: ``dt: Annotated[float, Range(gt=0, le=1 / 60)] = 1e-4``.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def describe(self) -> str:
        low = f"> {self.gt:g}" if self.gt is not None else f">= {self.ge:g}" if self.ge is not None else None
        high = f"< {self.lt:g}" if self.lt is not None else f"<= {self.le:g}" if self.le is not None else None
        if low and high:
            return f"{low} and {high}"
        return low or high or "finite"

    def ok(self, v) -> bool:
        try:
            v = float(v)
        except (TypeError, ValueError):
            return False
        return (math.isfinite(v) and (self.gt is None or v > self.gt) and (self.ge is None or v >= self.ge)
                and (self.lt is None or v < self.lt) and (self.le is None or v <= self.le))

    def check(self, key: str, value) -> None:
        items = value if isinstance(value, (tuple, list)) else (value,)
        if not all(self.ok(v) for v in items):
            each = "each value " if isinstance(value, (tuple, list)) else ""
            raise ConfigError(f"{key}={_show(value)} is out of range: {each}must be {self.describe()}")

    def outside(self) -> list[float]:
        """Values just outside the range, plus NaN (used by the tests that walk every scene)."""
        out = [float("nan")]
        for bound, step in ((self.gt, 0.0), (self.ge, -1.0), (self.lt, 0.0), (self.le, 1.0)):
            if bound is not None:
                out.append(bound + step * max(1.0, abs(bound)) if step else bound)
        return out


class Choices:
    """The valid values of a Config field: ``material: Annotated[str, Choices("elastic", "sand")] = "sand"``."""

    def __init__(self, *values):
        if not values:
            raise ValueError("Choices needs at least one value")
        self.values = tuple(values)

    def describe(self) -> str:
        return "{" + "|".join(str(v) if v != "" else "''" for v in self.values) + "}"

    def check(self, key: str, value) -> None:
        if value not in self.values:
            raise ConfigError(f"{key}={_show(value)} is not a valid choice: expected one of "
                              f"{', '.join(repr(v) if v == '' else str(v) for v in self.values)}")

    def __repr__(self):
        return f"Choices{self.values!r}"


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def field_constraints(cls) -> dict[str, list]:
    """{field name: [Range | Choices, ...]} declared in the Config's annotations (``Literal`` counts as Choices)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: dict[str, list] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        found = []
        if typing.get_origin(tp) is typing.Annotated:
            found = [m for m in tp.__metadata__ if isinstance(m, (Range, Choices))]
            tp = typing.get_args(tp)[0]
        if typing.get_origin(tp) is typing.Literal:
            found.append(Choices(*typing.get_args(tp)))
        if found:
            out[f.name] = found
    return out


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
    """Docstrings written under dataclass fields (nerfstudio style), read from the source of ``cls`` and of every
    dataclass it inherits from (a field redeclared in a subclass takes the subclass's docstring, or keeps the
    base's when the subclass writes none)."""
    docs: dict[str, str] = {}
    for klass in reversed(inspect.getmro(cls) if inspect.isclass(cls) else (cls,)):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls) -> dict[str, str]:
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
    limits = field_constraints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        kind = _type_name(hints[f.name])
        for c in limits.get(f.name, []):
            if isinstance(c, Range):
                kind += " " + c.describe()
            elif typing.get_origin(hints[f.name]) is not typing.Literal:
                kind = c.describe()
        lines.append(f"  {f.name} ({kind}, default {default!r})")
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

    Unknown keys, badly typed values and values outside a field's declared ``Range``/``Choices`` raise
    ``ConfigError`` (one line, naming the field), then the Config's own ``validate()`` runs; nothing is built.
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
    for name, rules in field_constraints(cls).items():
        for rule in rules:
            rule.check(name, getattr(cfg, name))
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
