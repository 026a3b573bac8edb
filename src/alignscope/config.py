"""YAML files into the `Config` dataclasses that sit beside each stage.

Validation is pydantic's (unknown keys, wrong types, missing fields, all
reported at once); this module only points each problem at its YAML line and
suggests the key that was probably meant.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from alignscope.io import InputError

T = TypeVar("T")
_STRICT = ConfigDict(extra="forbid")


class ConfigError(InputError):
    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        head = f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the config"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in problems))


def _forbid_extra(cls: type) -> None:
    """Make pydantic refuse unknown keys in `cls` and every dataclass nested in it."""
    if not dataclasses.is_dataclass(cls) or getattr(cls, "__pydantic_config__", None) is _STRICT:
        return
    cls.__pydantic_config__ = _STRICT  # read by pydantic when it validates a stdlib dataclass
    import typing

    for f in dataclasses.fields(cls):
        for arg in _walk_types(typing.get_type_hints(cls).get(f.name)):
            _forbid_extra(arg)


def _walk_types(tp: Any):
    import typing

    if tp is None:
        return
    yield tp
    for arg in typing.get_args(tp):
        yield from _walk_types(arg)


def load_yaml(path: str | Path) -> tuple[dict, yaml.Node | None]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of keys to values at the top level")
    return data, node


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """YAML line of the deepest node along `loc` that exists."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(key)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _known_keys(cls: type, loc: tuple) -> list[str]:
    """Field names of the dataclass that `loc` (minus its last part) points into."""
    import typing

    for key in loc[:-1]:
        if not dataclasses.is_dataclass(cls):
            return []
        hint = typing.get_type_hints(cls).get(str(key))
        cls = next((t for t in _walk_types(hint) if dataclasses.is_dataclass(t)), None)
    return [f.name for f in dataclasses.fields(cls)] if cls and dataclasses.is_dataclass(cls) else []


def _describe(err: dict, cls: type) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "unexpected_keyword_argument" or kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _known_keys(cls, loc), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = _known_keys(cls, loc)
        return f"{path}: unknown key{hint}" + ("" if close else f" (known keys: {', '.join(known)})")
    if kind == "missing" or kind == "missing_argument":
        return f"{path}: missing; this field is required"
    got = err.get("input")
    got_text = f", got {got!r}" if not isinstance(got, dict) and got is not None else ""
    return f"{path}: {err['msg'].lower()}{got_text}"


def parse_config(cls: type[T], data: dict, source: str = "config", node: yaml.Node | None = None) -> T:
    """Validate `data` into `cls`, raising one ConfigError that lists every problem."""
    _forbid_extra(cls)
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as e:
        found = []
        for err in e.errors():
            line = _line_of(node, err["loc"])
            found.append((line or 0, (f"line {line}, " if line else "") + _describe(err, cls)))
        raise ConfigError(source, [text for _, text in sorted(found)]) from None


def load_config(cls: type[T], path: str | Path, overrides: list[str] = ()) -> T:
    data, node = load_yaml(path)
    return parse_config(cls, apply_overrides(data, overrides), str(path), node)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`key.sub=value` pairs from the command line; values are parsed as YAML."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r}: expected key=value, e.g. training.learning_rate=1e-5")
        target = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = target.get(part)
            target[part] = dict(child) if isinstance(child, dict) else {}
            target = target[part]
        target[parts[-1]] = yaml.safe_load(raw) if raw else None
    return data


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)
