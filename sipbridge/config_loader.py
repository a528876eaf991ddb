"""The generic typed-YAML loader behind every YAML file we read (deployment config, campaigns, flows).

Strict, and every problem names the dotted key path and the file line it came from: unknown keys, wrong
types, bad values, duplicate keys, alias bombs. `${ENV_VAR}` (or `${ENV_VAR:-default}`) in any string value
is replaced from the environment before validation, `--set dotted.key=value` overrides are applied after it,
and secrets (`SecretStr`) are masked on output. The schema itself lives with its users (sipbridge/config.py
for the deployment config); this module knows no key of it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Generic, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr, ValidationError, ValidationInfo, field_validator

KeyPath = tuple[str | int, ...]


# YAML 1.1 reads unquoted yes/no/on/off as booleans, and pydantic would take a boolean as the number 1 or 0
# (`max_calls: yes` meant one call) and 1/0/"y" as booleans. Numbers and booleans never stand in for each
# other here. Strings are still read, since `${ENV}` substitution yields strings: a number's digits, and for a
# boolean the YAML words (flow files read yes/no as words, so `interruptible: no` stays a boolean there).
_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def _scalar_kind(annotation: Any) -> type | None:
    """bool, int or float if the annotation is one of them (or it | None), else None (left to pydantic)."""
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    kinds = [arg for arg in args if arg is not type(None)]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (bool, int, float) else None


def strict_scalar(kind: type | None, value: Any) -> Any:
    if kind is None or value is None:
        return value
    if kind is bool:
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
    elif isinstance(value, bool):
        raise ValueError(
            f"must be a number, not the boolean {str(value).lower()} (YAML reads unquoted yes/no/on/off as"
            " booleans)"
        )
    return value


class StrictScalars(BaseModel):
    """Mixin of every model our YAML files load into: numbers and booleans are not interchangeable."""

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field_info = cls.model_fields.get(info.field_name or "")
        return value if field_info is None else strict_scalar(_scalar_kind(field_info.annotation), value)


# ----------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: which key, where it came from, what is wrong."""

    path: str
    message: str
    source: str  # "file.yaml:12", "--set", "env" ...

    def __str__(self) -> str:
        parts = [part for part in (self.source, self.path, self.message) if part]
        return ": ".join(parts)


class ConfigError(Exception):
    """Raised with every problem found, not only the first."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


@dataclass
class Origins:
    """Where each key path was written: file line, or an override."""

    lines: dict[KeyPath, str] = field(default_factory=dict)

    def source_of(self, path: KeyPath) -> str:
        # The deepest known ancestor: a missing key is reported at its parent mapping.
        for depth in range(len(path), -1, -1):
            where = self.lines.get(path[:depth])
            if where is not None:
                return where
        return ""


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


# An alias (`*name`) repeats its anchor's whole subtree. Composing shares the node, but everything after it
# (key walk, construction, `${ENV}` substitution, validation) sees the expanded tree, so nine nested lists of
# nine aliases (~0.4 KB, a "billion laughs") cost minutes and gigabytes. Aliases may add this many nodes to
# what is written, which no real config, flow or campaign comes near.
ALIAS_EXPANSION_LIMIT = 100_000


class _AliasTooLarge(Exception):
    pass


class YamlRefused(yaml.YAMLError):
    """Well-formed YAML we will not expand: an alias bomb, an alias cycle, absurd nesting."""


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """Nodes in the tree `node` stands for once every alias is expanded; linear in the nodes written."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise _AliasTooLarge("an alias refers to a node that contains it (a cycle)")
    active.add(key)
    total = 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_nodes(k, memo, active) + _expanded_nodes(v, memo, active)
    elif isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_nodes(item, memo, active) for item in node.value)
    active.discard(key)
    memo[key] = total
    return total


def _check_aliases(node: yaml.Node) -> None:
    memo: dict[int, int] = {}
    total = _expanded_nodes(node, memo, set())
    if total - len(memo) > ALIAS_EXPANSION_LIMIT:
        raise _AliasTooLarge(
            f"aliases (*name) expand {len(memo)} written nodes to {total}; at most {ALIAS_EXPANSION_LIMIT}"
            " more than written are allowed"
        )


def compose_bounded(text: str, loader: type[yaml.SafeLoader] = _UniqueKeyLoader) -> yaml.Node | None:
    """`yaml.compose`, refusing alias bombs, alias cycles and nesting deeper than Python's stack allows
    (as yaml.YAMLError, so every caller reports them like any other YAML problem)."""
    try:
        node = yaml.compose(text, Loader=loader)
        if node is not None:
            _check_aliases(node)
    except RecursionError:
        raise YamlRefused("nested too deeply") from None
    except _AliasTooLarge as exc:
        raise YamlRefused(str(exc)) from None
    return node


def _walk_nodes(
    node: yaml.Node, path: KeyPath, origin: str, origins: Origins, issues: list[ConfigIssue]
) -> None:
    origins.lines[path] = f"{origin}:{node.start_mark.line + 1}"
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                issues.append(
                    ConfigIssue(
                        _dotted((*path, key)), "key given twice", f"{origin}:{key_node.start_mark.line + 1}"
                    )
                )
            seen.add(key)
            _walk_nodes(value_node, (*path, key), origin, origins, issues)
            # A key's own line is more useful than its value's (a nested block starts on the next line).
            origins.lines[(*path, key)] = f"{origin}:{key_node.start_mark.line + 1}"
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk_nodes(item, (*path, index), origin, origins, issues)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute_env(
    value: Any, path: KeyPath, env: Mapping[str, str], origins: Origins, issues: list[ConfigIssue]
) -> Any:
    if isinstance(value, dict):
        return {k: _substitute_env(v, (*path, k), env, origins, issues) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_env(v, (*path, i), env, origins, issues) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        issues.append(
            ConfigIssue(_dotted(path), f"environment variable {name} is not set", origins.source_of(path))
        )
        return ""

    return _ENV_REF.sub(replace, value)


def _parse_yaml(
    text: str,
    origin: str,
    origins: Origins,
    issues: list[ConfigIssue],
    loader: type[yaml.SafeLoader] = yaml.SafeLoader,
) -> dict[str, Any]:
    try:
        node = compose_bounded(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark is not None else origin
        what = "YAML refused" if isinstance(exc, YamlRefused) else "not valid YAML"
        issues.append(ConfigIssue("", f"{what}: {getattr(exc, 'problem', exc)}", where))
        return {}
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        issues.append(ConfigIssue("", "the top level must be a mapping of sections", f"{origin}:1"))
        return {}
    _walk_nodes(node, (), origin, origins, issues)
    data = yaml.load(text, Loader=loader)  # always a SafeLoader (subclass)
    return data if isinstance(data, dict) else {}


def parse_override(override: str) -> tuple[KeyPath, Any]:
    """`dotted.key=value` -> (("dotted", "key"), value); the value is parsed as a YAML scalar or list."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            [ConfigIssue("", f"override {override!r} is not of the form dotted.key=value", "--set")]
        )
    path = tuple(part for part in key.strip().split("."))
    if any(not part for part in path):
        raise ConfigError([ConfigIssue(key, "empty part in dotted key", "--set")])
    try:
        value = yaml.safe_load(raw) if raw.strip() and compose_bounded(raw, yaml.SafeLoader) else ""
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(key, f"value is not valid YAML: {exc}", "--set")]) from exc
    return path, value


def _apply_override(data: dict[str, Any], path: KeyPath, value: Any, origins: Origins) -> list[ConfigIssue]:
    node: dict[str, Any] = data
    for depth, part in enumerate(path[:-1]):
        if str(part) not in node:  # a section the override creates: its problems are the override's
            origins.lines[path[: depth + 1]] = "--set"
        child = node.setdefault(str(part), {})
        if not isinstance(child, dict):
            return [
                ConfigIssue(
                    _dotted(path[: depth + 1]), "is not a section, cannot set a key inside it", "--set"
                )
            ]
        node = child
    node[str(path[-1])] = value
    origins.lines[path] = "--set"
    return []


ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class LoadedYaml(Generic[ModelT]):
    """A validated model and where each of its keys came from (for errors found after validation)."""

    model: ModelT
    origins: Origins


def read_yaml_text(path: str | os.PathLike[str], what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read {what}: {exc.strerror}", str(path))]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue("", f"{what} is not UTF-8 text", str(path))]) from exc


def load_yaml_model(
    model: type[ModelT],
    text: str,
    origin: str,
    *,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    loader: type[yaml.SafeLoader] = yaml.SafeLoader,
) -> LoadedYaml[ModelT]:
    """Parse, substitute `${ENV}`, apply `--set` overrides and validate any of our YAML files.

    Every problem is collected and raised as one ConfigError whose issues name the key path and file line.
    The deployment config, campaign and flow files load through here. `loader` is a SafeLoader subclass
    (flow files read `yes`/`no` as words, not booleans).
    """
    env = os.environ if env is None else env
    issues: list[ConfigIssue] = []
    origins = Origins()
    data = _parse_yaml(text, origin, origins, issues, loader)
    if issues:
        raise ConfigError(issues)
    data = _substitute_env(data, (), env, origins, issues)
    for override in overrides:  # every bad one is reported, not only the first
        try:
            key_path, value = parse_override(override)
        except ConfigError as exc:
            issues.extend(exc.issues)
            continue
        issues.extend(_apply_override(data, key_path, value, origins))
    try:
        loaded = LoadedYaml(model.model_validate(data), origins)
    except ValidationError as exc:
        # A key already reported (an unset ${VAR}, an override that could not be applied) is not reported
        # again for the empty value it was left with.
        known = {issue.path for issue in issues}
        issues.extend(issue for issue in _validation_issues(exc, origins) if issue.path not in known)
    if issues:
        raise ConfigError(issues)
    return loaded


def _validation_issues(exc: ValidationError, origins: Origins) -> Iterator[ConfigIssue]:
    for error in exc.errors():
        loc: KeyPath = tuple(part for part in error["loc"] if isinstance(part, str | int))
        kind = error["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if "input" in error and not isinstance(error["input"], dict | list):
                message += f" (got {error['input']!r})"
        yield ConfigIssue(_dotted(loc), message, origins.source_of(loc))


# ------------------------------------------------------------------------------------------ output


SECRET_MASK = "********"


def masked_dict(model: BaseModel) -> dict[str, Any]:
    """A validated model as plain data with every secret replaced by a mask."""

    def convert(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return SECRET_MASK
        if isinstance(value, BaseModel):
            return {
                info.alias or name: convert(getattr(value, name))
                for name, info in type(value).model_fields.items()
            }
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    result = convert(model)
    assert isinstance(result, dict)
    return result


def dump_masked_yaml(model: BaseModel) -> str:
    return yaml.safe_dump(masked_dict(model), sort_keys=False, default_flow_style=False)


def reference_markdown(model: type[BaseModel], preamble: Sequence[str]) -> str:
    """A markdown table of every key of `model` (sections recursed), its type, default and description."""
    lines = [*preamble, "| key | type | default | meaning |", "|---|---|---|---|"]

    def describe(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            key = f"{prefix}{info.alias or name}"
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                doc = (annotation.__doc__ or "").strip().splitlines()
                lines.append(f"| **`{key}`** | section | | {doc[0] if doc else ''} |")
                describe(annotation, f"{key}.")
                continue
            default = info.get_default(call_default_factory=True)
            default_text = (
                "secret"
                if isinstance(default, SecretStr)
                else yaml.safe_dump(
                    default if not isinstance(default, Path) else str(default), default_flow_style=True
                )
                .strip()
                .removesuffix("...")
                .strip()
            )
            type_text = _type_name(annotation)
            desc = (info.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {type_text} | `{default_text}` | {desc} |")

    describe(model, "")
    return "\n".join(lines) + "\n"


def _type_name(annotation: Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = text.replace("typing.", "").replace("pydantic.types.", "").replace("pathlib.", "")
    text = re.sub(r"<class '([^']+)'>", r"\1", text)
    return text.replace("|", "\\|")


__all__ = [
    "SECRET_MASK",
    "ConfigError",
    "ConfigIssue",
    "KeyPath",
    "LoadedYaml",
    "Origins",
    "StrictScalars",
    "YamlRefused",
    "compose_bounded",
    "dump_masked_yaml",
    "load_yaml_model",
    "masked_dict",
    "parse_override",
    "read_yaml_text",
    "reference_markdown",
    "strict_scalar",
]
