"""A small, strict validator for JSON data: each spec returns the list of problems it finds
at a path. Objects reject keys they do not name, numbers must be finite, and unions say
which shapes were tried. The results-file schema (bench/schema.py) is written in it."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

Problems = list[str]
Spec = Callable[[Any, str], Problems]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def num(lo: float | None = None) -> Spec:
    def check(value: Any, path: str) -> Problems:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [f"{path}: expected a number, got {_type_name(value)}"]
        if not math.isfinite(value):
            return [f"{path}: {value} is not a finite number"]
        if lo is not None and value < lo:
            return [f"{path}: {value} is below {lo}"]
        return []

    return check


def integer(lo: int | None = None) -> Spec:
    def check(value: Any, path: str) -> Problems:
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{path}: expected an integer, got {_type_name(value)}"]
        return [f"{path}: {value} is below {lo}"] if lo is not None and value < lo else []

    return check


def string(pattern: str | None = None) -> Spec:
    regex = re.compile(pattern) if pattern else None

    def check(value: Any, path: str) -> Problems:
        if not isinstance(value, str):
            return [f"{path}: expected a string, got {_type_name(value)}"]
        if regex is not None and not regex.fullmatch(value):
            return [f"{path}: {value[:80]!r} does not match {pattern}"]
        return []

    return check


def boolean(value: Any, path: str) -> Problems:
    return [] if isinstance(value, bool) else [f"{path}: expected true/false, got {_type_name(value)}"]


def null(value: Any, path: str) -> Problems:
    return [] if value is None else [f"{path}: expected null, got {_type_name(value)}"]


def const(expected: Any) -> Spec:
    def check(value: Any, path: str) -> Problems:
        same = value == expected and type(value) is type(expected)
        return [] if same else [f"{path}: expected {expected!r}, got {value!r}"[:200]]

    return check


def one_of(*allowed: Any) -> Spec:
    def check(value: Any, path: str) -> Problems:
        return [] if value in allowed else [f"{path}: {value!r} is not one of {', '.join(map(repr, allowed))}"[:200]]

    return check


def obj(required: dict[str, Spec], optional: dict[str, Spec] | None = None) -> Spec:
    optional = optional or {}

    def check(value: Any, path: str) -> Problems:
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {_type_name(value)}"]
        problems = [f"{path}: unknown key {k!r}" for k in value if k not in required and k not in optional]
        problems += [f"{path}: missing key {k!r}" for k in required if k not in value]
        for k, v in value.items():
            spec = required.get(k) or optional.get(k)
            if spec is not None:
                problems += spec(v, f"{path}.{k}")
        return problems

    return check


def mapping(values: Spec, key_pattern: str = r"[A-Za-z0-9_:.\-]+") -> Spec:
    """An object whose keys are data (e.g. stage names)."""
    keys = string(key_pattern)

    def check(value: Any, path: str) -> Problems:
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {_type_name(value)}"]
        problems: Problems = []
        for k, v in value.items():
            problems += keys(k, f"{path} key") + values(v, f"{path}.{k}")
        return problems

    return check


def array(items: Spec, min_items: int = 0) -> Spec:
    def check(value: Any, path: str) -> Problems:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {_type_name(value)}"]
        problems = [f"{path}: expected at least {min_items} item(s)"] if len(value) < min_items else []
        for i, v in enumerate(value):
            problems += items(v, f"{path}[{i}]")
        return problems

    return check


def any_of(*specs: Spec) -> Spec:
    """The first spec the value satisfies; else the problems of each shape tried."""

    def check(value: Any, path: str) -> Problems:
        tried = []
        for spec in specs:
            problems = spec(value, path)
            if not problems:
                return []
            tried.append("; ".join(problems[:3]))
        return [f"{path}: matches none of {len(specs)} shapes: " + " | ".join(tried)]

    return check


def tagged(tag: str, shapes: dict[str, Spec]) -> Spec:
    """An object whose `tag` key says which shape it has."""

    def check(value: Any, path: str) -> Problems:
        if not isinstance(value, dict) or value.get(tag) not in shapes:
            return [f"{path}: expected an object with {tag} one of {', '.join(shapes)}"]
        return shapes[value[tag]](value, path)

    return check


def json_value(value: Any, path: str) -> Problems:
    """Any JSON (a recorded configuration): string keys and finite numbers only."""
    if isinstance(value, dict):
        problems: Problems = []
        for k, v in value.items():
            problems += string()(k, f"{path} key") + json_value(v, f"{path}.{k}")
        return problems
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in json_value(v, f"{path}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: {value} is not a finite number"]
    return []
