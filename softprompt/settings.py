"""Every setting of a run is a field of a config dataclass; the surfaces are generated from it.

A field's metadata carries what the surfaces need besides its name, type and default:
`help` (the one help text), `flag` (a command-line flag not spelled after the field, e.g.
`--train-batch-size` for `batch_size`), `param` (a pipeline parameter not named after the field,
e.g. `base_model` for `model`) and `choices`. A nested config (TrainConfig.prompt) contributes its
own fields, named `prompt.length` here and `prompt_length` as a pipeline parameter.

- `add_flags` adds argparse flags for a config's fields, `given` and `values` read them back.
- `read_config` and `load_config` build a config from a YAML/JSON file (or one section of it) and
  flags, naming the file, line and field of every mistake.
- `pipeline_defaults` and `config_from_pipeline` give KFP parameters their defaults and turn them
  back into a config. KFP parameters cannot be None, so an optional field travels as its type's
  zero (0, 0.0 or '') and 0 means None.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

GIVEN = "given_settings"  # the namespace attribute listing the flags given on the command line
SCALARS = (int, float, str)


@dataclass(frozen=True)
class Setting:
    """One leaf field of a config: its key (`lr`, `prompt.length`) and how surfaces spell it."""

    key: str
    kind: type  # int, float or str; an optional field also accepts None
    optional: bool
    default: Any  # MISSING for a field without a default
    help: str
    flag: str
    param: str
    choices: tuple | None

    @property
    def dest(self) -> str:
        """The argparse attribute: the flag's name with underscores (`train_batch_size`)."""
        return self.flag[2:].replace("-", "_")

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def zero(self) -> Any:
        """What stands for None where None cannot travel (a KFP parameter)."""
        return self.kind()


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of an annotation such as `int | None`."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def settings(cls: type, prefix: str = "", scalars_only: bool = False) -> list[Setting]:
    """The leaf fields of config class `cls`, the fields of nested configs included. A field
    that is no scalar (ServeConfig.tasks) is an error, or left out with `scalars_only`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        kind, optional = _unwrap(hints[f.name])
        key = prefix + f.name
        if is_dataclass(kind):
            out += settings(kind, key + ".", scalars_only)
            continue
        if kind not in SCALARS and scalars_only:
            continue
        if kind not in SCALARS:
            raise TypeError(f"{cls.__name__}.{f.name}: {kind} has no flag or parameter form")
        meta = f.metadata
        out.append(
            Setting(
                key=key,
                kind=kind,
                optional=optional,
                default=_default(f),
                help=meta.get("help", ""),
                flag=meta.get("flag", "--" + f.name.replace("_", "-")),
                param=meta.get("param", key.replace(".", "_")),
                choices=tuple(meta["choices"]) if meta.get("choices") else None,
            )
        )
    return out


def defaults(cls: type) -> dict[str, Any]:
    """{key: default} of every scalar field of `cls` that has a default."""
    return {s.key: s.default for s in settings(cls, scalars_only=True) if not s.required}


def flatten(config) -> dict[str, Any]:
    """{key: value} of a config instance, nested configs' fields under `prefix.` keys."""
    found = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            found |= {f"{f.name}.{k}": v for k, v in flatten(value).items()}
        else:
            found[f.name] = value
    return found


def pick(cls: type, keys: Iterable[str] | None = None) -> list[Setting]:
    """The settings of `cls` named in `keys`, in that order (all of them when None)."""
    if keys is None:
        return settings(cls)
    chosen = settings(cls, scalars_only=True)
    by_key = {s.key: s for s in chosen}
    return [by_key[k] for k in keys]


# ------------------------------------------------------------------ command line
class _Given(argparse.Action):
    """Stores a flag's value and records that it was given, so a config file yields to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, GIVEN, (*getattr(namespace, GIVEN, ()), self.dest))


def add_flags(
    parser: argparse.ArgumentParser,
    chosen: list[Setting],
    *,
    unset: bool = False,
    needed: Iterable[str] = (),
) -> list[Setting]:
    """Adds one flag per setting. By default a flag defaults to the field's default (a field
    without one is a required flag) and `given` tells which flags were typed. With `unset`, a
    flag left out is "not given" and absent from the parsed namespace: the value comes from
    elsewhere (a config file, then the field's default), as the help says. The keys in `needed`
    are not given by default either, and the caller requires them from the flag or a file."""
    needed = set(needed)
    for s in chosen:
        kwargs: dict[str, Any] = {"type": s.kind, "dest": s.dest, "help": s.help}
        if s.choices:
            kwargs["choices"] = s.choices
        if unset:
            kwargs["default"] = argparse.SUPPRESS
            if not s.required:
                kwargs["help"] = f"{s.help} (default: --config's value, else {s.default!r})"
        elif s.key in needed:
            kwargs.update(default=argparse.SUPPRESS, action=_Given)
            kwargs["help"] = f"{s.help} (required, here or in --config)"
        elif s.required:
            kwargs.update(required=True, action=_Given)
        else:
            kwargs.update(default=s.default, action=_Given)
        parser.add_argument(s.flag, **kwargs)
    if not unset:
        parser.set_defaults(**{GIVEN: ()})
    return chosen


def _nest(flat: Mapping[str, Any]) -> dict:
    """{"prompt.length": 4, "lr": 0.1} -> {"prompt": {"length": 4}, "lr": 0.1}."""
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


def given(args: argparse.Namespace, chosen: list[Setting]) -> dict:
    """The settings typed on the command line, as a nested mapping of field values."""
    typed = getattr(args, GIVEN, None)
    if typed is None:  # flags "not given" by default (`unset`) are absent unless typed
        typed = vars(args)
    return _nest({s.key: getattr(args, s.dest) for s in chosen if s.dest in typed})


def values(args: argparse.Namespace, chosen: list[Setting]) -> dict:
    """Every setting's parsed value (defaults included), as a nested mapping of field values."""
    return _nest({s.key: getattr(args, s.dest) for s in chosen if hasattr(args, s.dest)})



# ------------------------------------------------------------------ config files
@dataclass(frozen=True)
class ConfigFile:
    """Settings read from a YAML/JSON file, or from one section of it (`params.yaml:train`)."""

    where: str  # the file, with the section when there is one
    path: str
    values: dict
    lines: dict[str, int]  # dotted key -> 1-based line of the key in the file


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = prefix + str(key.value)
            lines[name] = key.start_mark.line + 1
            lines |= _key_lines(value, name + ".")
    return lines


def read_config(spec: str | Path) -> ConfigFile:
    """Reads `FILE` or `FILE:SECTION` (a dotted key of the file's top-level mapping)."""
    spec = str(spec)
    path, section = spec, ""
    if not Path(spec).is_file() and ":" in spec:
        path, section = spec.rsplit(":", 1)
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = Path(path).read_text()
    try:
        raw = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text)) if raw is not None else {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML/JSON: {err}") from err
    raw = {} if raw is None else raw
    for part in section.split(".") if section else ():
        if not isinstance(raw, dict) or part not in raw:
            raise ValueError(f"{path}: no section {section!r}")
        raw = raw[part]
    if not isinstance(raw, dict):
        raise ValueError(f"{spec}: a config must be a mapping of fields")
    if section:
        start = section + "."
        lines = {k[len(start) :]: n for k, n in lines.items() if k.startswith(start)}
    return ConfigFile(where=spec, path=path, values=raw, lines=lines)


def _check_value(s: Setting, value: Any) -> Any:
    """`value` for setting `s`, or a ValueError naming the field. Ints count as floats, and a
    string that reads as a float does too (YAML 1.1 reads `1e-5` as a string)."""
    if value is None and s.optional:
        return None
    if s.kind is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            return float(value)
    if not isinstance(value, s.kind) or isinstance(value, bool):
        kind = s.kind.__name__ + (" or null" if s.optional else "")
        raise ValueError(f"{s.key} must be {kind}, got {value!r} ({type(value).__name__})")
    return value


def _checked(
    cls: type, raw: Mapping, where: str, lines: Mapping[str, int], prefix: str = ""
) -> dict[str, Any]:
    """{key: value} of a nested mapping of `cls` fields, each key known and each value typed."""
    by_key = {s.key: s for s in settings(cls)}
    nested = {k.split(".")[0] for k in by_key if "." in k}
    found = {}
    for name, value in raw.items():
        key = prefix + str(name)
        at = f"{where}:{lines[key]}" if key in lines else where
        if key in nested:
            if is_dataclass(value):
                value = asdict(value)
            if not isinstance(value, Mapping):
                raise ValueError(f"{at}: {key} must be a mapping of its fields, got {value!r}")
            found |= _checked(cls, value, where, lines, key + ".")
        elif key in by_key:
            try:
                found[key] = _check_value(by_key[key], value)
            except ValueError as err:
                raise ValueError(f"{at}: {err}") from None
        else:
            close = difflib.get_close_matches(key, by_key, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{at}: unknown {cls.__name__} field {key!r}{hint}")
    return found


def _construct(cls: type, flat: Mapping[str, Any]):
    """`cls` from {key: value}, nested configs built from their `prefix.` keys."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        kind, _ = _unwrap(hints[f.name])
        if is_dataclass(kind):
            start = f.name + "."
            inner = {k[len(start) :]: v for k, v in flat.items() if k.startswith(start)}
            kwargs[f.name] = _construct(kind, inner)
        elif f.name in flat:
            kwargs[f.name] = flat[f.name]
    return cls(**kwargs)


def load_config(
    cls: type,
    source: ConfigFile | None = None,
    overrides: Mapping | None = None,
    origin: str = "command line",
):
    """A `cls` from a config file's fields, then `overrides` (a nested mapping, e.g. the flags
    given), then the field defaults. Unknown keys and values of the wrong type are refused with
    the file, line and field named; so are the config's own validation errors."""
    flat: dict[str, Any] = {}
    if source is not None:
        flat |= _checked(cls, source.values, source.path, source.lines)
    flat |= _checked(cls, overrides or {}, origin, {})
    try:
        return _construct(cls, flat)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source.where if source else origin}: {err}") from None


# ------------------------------------------------------------------ pipeline parameters
def pipeline_defaults(cls: type) -> types.SimpleNamespace:
    """Each field's default under its pipeline parameter name, None as the type's zero:
    `lr: float = TRAIN.lr` in a pipeline signature. A field without a default is left out."""
    found = {}
    for s in settings(cls):
        if not s.required:
            found[s.param] = s.zero() if s.default is None else s.default
    return types.SimpleNamespace(**found)


def from_pipeline(s: Setting, value: Any) -> Any:
    """A pipeline parameter's value as the field's: an optional field's zero is None."""
    if s.optional and value == s.zero():
        return None
    return value


def config_from_pipeline(cls: type, params: Mapping[str, Any], **fixed):
    """A `cls` from pipeline parameters: every parameter named after a field (its `param` name)
    is read, 0 as None for optional fields; `fixed` are field values that win over them (a
    nested config may be given whole)."""
    read = {s.key: from_pipeline(s, params[s.param]) for s in settings(cls) if s.param in params}
    return load_config(cls, None, _nest(read) | fixed, origin="pipeline parameters")
