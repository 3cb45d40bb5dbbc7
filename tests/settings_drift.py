"""Drift checks for tests/test_settings.py: the default each surface (a parser's flags, a
compiled pipeline's parameters) gives a setting, compared with its config dataclass's default."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from softprompt.settings import defaults, from_pipeline, settings


def parser_defaults(parser: argparse.ArgumentParser, cls: type) -> dict[str, Any]:
    """{key: default} of the parser's flags that spell a field of `cls` (by flag name, so a flag
    written by hand is found too). Required flags and flags "not given" by default are left out."""
    by_flag = {s.flag: s for s in settings(cls, scalars_only=True)}
    found = {}
    for action in parser._actions:
        if action.required or action.default == argparse.SUPPRESS:
            continue
        for flag in action.option_strings:
            if flag in by_flag:
                found[by_flag[flag].key] = action.default
    return found


def pipeline_field_defaults(cls: type, params: Mapping[str, Any]) -> dict[str, Any]:
    """{key: default} of the pipeline parameters (name -> compiled default) that stand for a
    field of `cls`, decoded as `config_from_pipeline` reads them. A compiled spec writes
    integers as floats (20.0); a whole float reads as the int field's int."""
    found = {}
    for s in settings(cls):
        value = params.get(s.param)
        if value is None:
            continue
        if s.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        found[s.key] = from_pipeline(s, value)
    return found


def drift(cls: type, surface: Mapping[str, Any], where: str) -> list[str]:
    """One line per setting of `surface` ({key: default}) whose default is not the field's."""
    expected = defaults(cls)
    return [
        f"{where}: {key} defaults to {value!r}, but {cls.__name__}.{key} to {expected[key]!r}"
        for key, value in surface.items()
        if key in expected and value != expected[key]
    ]
