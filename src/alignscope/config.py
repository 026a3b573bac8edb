"""YAML files into the `Config` dataclasses that sit beside each stage.

Validation is pydantic's (unknown keys, wrong types, missing fields, all
reported at once); this module only points each problem at its YAML line and
suggests the key that was probably meant. YAML itself is read with bounds: a
document whose aliases expand past MAX_YAML_NODES values (an alias bomb) and a
mapping that repeats a key are refused before anything is built from them.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from alignscope.io import InputError, excerpt

T = TypeVar("T")
# unknown keys are errors; so are NaN and infinity, which no setting of ours means
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
# Values in a config with its aliases expanded: a study config has a few hundred.
MAX_YAML_NODES = 100_000


class ConfigError(InputError):
    def __init__(self, source: str, problems: list[str], where: str = "in the config"):
        self.problems = problems
        head = f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''} {where}"
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
        data, node = bounded_yaml(text, str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of keys to values at the top level")
    return data, node


def bounded_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """The document and its node tree, refusing repeated keys and aliases that expand past
    MAX_YAML_NODES. Composing is cheap (an alias is one shared node); the bound is checked on
    the nodes, before any value is built, formatted or validated."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = 1  # a node that contains itself counts once
        children = ([c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else
                    n.value if isinstance(n, yaml.SequenceNode) else [])
        if isinstance(n, yaml.MappingNode):
            seen: dict[tuple, int] = {}
            for key, _ in n.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if (key.tag, key.value) in seen:
                        first = seen[key.tag, key.value]
                        raise InputError(f"{source}, line {key.start_mark.line + 1}: key {excerpt(key.value)} is "
                                         f"given twice in one mapping (first on line {first}); keep one")
                    seen[key.tag, key.value] = key.start_mark.line + 1
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                break
        sizes[id(n)] = total
        return total

    if node is not None and size(node) > MAX_YAML_NODES:
        raise InputError(f"{source}: more than {MAX_YAML_NODES} values once its aliases (*name) are expanded; "
                         "refused (an alias bomb would take the machine's memory)")
    return yaml.safe_load(text), node


def line_of(node: yaml.Node | None, loc: tuple) -> int | None:
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


def _describe(err: dict, cls: type, loc: tuple) -> str:
    kind = err["type"]
    if kind == "unexpected_keyword_argument" or kind == "extra_forbidden":
        known = _known_keys(cls, loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        return "unknown key" + (f"; did you mean {close[0]!r}?" if close else f" (known keys: {', '.join(known)})")
    if kind == "missing" or kind == "missing_argument":
        return "missing; this field is required"
    got = err.get("input")
    got_text = f", got {excerpt(got)}" if not isinstance(got, dict) and got is not None else ""
    return f"{err['msg'].lower()}{got_text}"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (YAML line, or the command-line override that set
    the value; field path) and what."""

    line: int | None
    loc: tuple
    message: str
    override: str | None = None

    @property
    def path(self) -> str:
        return ".".join(str(p) for p in self.loc) or "(top level)"

    def __str__(self) -> str:
        where = f"override {self.override!r}, " if self.override else f"line {self.line}, " if self.line else ""
        return where + f"{self.path}: {self.message}"


def override_of(loc: tuple, overrides: list[str] = ()) -> str | None:
    """The command-line override (key=value) that set the value at `loc`, or inside which it lies:
    its problem is the override's, not the file line's that the override replaced."""
    loc = tuple(str(p) for p in loc)
    for item in reversed(overrides):  # the last override of a key is the one in effect
        path = tuple(item.partition("=")[0].split("."))
        if loc[:len(path)] == path:
            return item
    return None


def locate(node: yaml.Node | None, loc: tuple, message: str, overrides: list[str] = ()) -> Problem:
    override = override_of(loc, overrides)
    return Problem(None if override else line_of(node, loc), loc, message, override)


def config_problems(cls: type, data: dict, node: yaml.Node | None = None, overrides: list[str] = ()) -> list[Problem]:
    """Everything wrong with `data` (a file's `node`, then `overrides`) as a `cls`, in line order."""
    _forbid_extra(cls)
    try:
        TypeAdapter(cls).validate_python(data)
    except ValidationError as e:
        found = []
        for err in e.errors():
            # pydantic adds steps of its own (validators, union members) to a location
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            found.append(locate(node, loc, _describe(err, cls, loc), overrides))
        return sorted(set(found), key=lambda p: (p.line or 0, p.path))
    return []


def parse_config(cls: type[T], data: dict, source: str = "config", node: yaml.Node | None = None,
                 overrides: list[str] = ()) -> T:
    """Validate `data` into `cls`, raising one ConfigError that lists every problem."""
    problems = config_problems(cls, data, node, overrides)
    if problems:
        raise ConfigError(source, [str(p) for p in problems])
    return TypeAdapter(cls).validate_python(data)


def validated(obj: T, source: str | None = None) -> T:
    """A config built in Python, checked as strictly as one read from YAML."""
    return parse_config(type(obj), dataclasses.asdict(obj), source or type(obj).__name__)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), for --help and the README."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def load_config(cls: type[T], path: str | Path, overrides: list[str] = ()) -> T:
    data, node = load_yaml(path)
    return parse_config(cls, apply_overrides(data, overrides), str(path), node, list(overrides))


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
        target[parts[-1]] = parse_override_value(item, raw)
    return data


def parse_override_value(item: str, raw: str) -> Any:
    if not raw:
        return None
    try:
        return bounded_yaml(raw, f"override {item!r}")[0]
    except yaml.constructor.ConstructorError as e:
        raise InputError(f"override {item!r}: {e.problem}; values are plain YAML (numbers, strings, lists, "
                         "mappings), and tags such as !!python are not allowed") from None
    except yaml.YAMLError as e:
        raise InputError(f"override {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e}); "
                         "quote it, e.g. key='a: b'") from None
