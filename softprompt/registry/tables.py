"""Registry records as text for people: aligned tables and key/value blocks.

`softprompt list` and `softprompt show` print these by default (`--format json` prints the
records themselves, for scripts). Every function here takes records already read and returns
text, so the layout can be checked without a registry.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from softprompt.registry.records import AliasState, Manifest

MISSING = "-"  # a cell with no value
# Manifest fields by the section of `manifest_block` they appear in, in order.
_PROMPT_FIELDS = ("blob_sha256", "shape", "dtype", "prompt_length", "init", "created_at")
_LINEAGE_FIELDS = ("base_model", "base_model_fingerprint", "objective", "dataset_version",
                   "code_version", "spec_sha256", "publish_id")
_VERBALIZER_FIELDS = ("metric", "label_words", "template")


class TaskListing(NamedTuple):
    """One task's versions (oldest first) and aliases, as the registry lists them."""

    versions: list[Manifest]
    aliases: dict[str, AliasState]


def cell(value: object) -> str:
    """`value` as one table cell or block value.

    None is "-", floats keep 6 significant digits, lists are comma-separated, and a string with
    a line break or surrounding blanks is shown quoted, so that a template stays on one line."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value) if value else MISSING
    text = str(value)
    if not text or "\n" in text or text != text.strip():
        return json.dumps(text)
    return text


def table(head: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, under a header row."""
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [head, *rows]]
    return "\n".join(lines)


def flatten(values: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts as (dotted key, value) pairs, keys sorted: {"dev": {"n": 9}} gives
    [("dev.n", 9)]."""
    pairs: list[tuple[str, object]] = []
    for key in sorted(values):
        value = values[key]
        if isinstance(value, dict) and value:
            pairs.extend(flatten(value, f"{prefix}{key}."))
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def key_values(title: str, pairs: list[tuple[str, object]]) -> str:
    """A titled block of `key  value` lines, values aligned."""
    if not pairs:
        return f"{title}\n  {MISSING}"
    width = max(len(key) for key, _ in pairs)
    return "\n".join([title, *(f"  {key.ljust(width)}  {cell(v)}" for key, v in pairs)])


def score(m: Manifest | None, split: str) -> str:
    """The dev or test score of `m`'s metrics with 4 decimals, "-" when it has none."""
    value = None if m is None else (m.metrics.get(split) or {}).get("score")
    return f"{value:.4f}" if isinstance(value, int | float) else MISSING


def short_data_version(version: str | None) -> str:
    """A DVC hash cut to its first 8 hex digits ("e033906b1a93...dir" gives "e033906b")."""
    if not version:
        return MISSING
    return version[:8] if len(version) > 12 else version


def _aliases_at(aliases: dict[str, AliasState], version: int) -> list[str]:
    return sorted(name for name, state in aliases.items() if state.version == version)


def tasks_table(uri: str, tasks: dict[str, TaskListing]) -> str:
    """One row per task: how many versions, the newest, where each alias points, and the dev
    and test scores of the version `production` points to."""
    if not tasks:
        return f"registry {uri}: no tasks"
    rows = []
    for name, listing in tasks.items():
        by_version = {m.version: m for m in listing.versions}
        production = listing.aliases.get("production")
        current = None if production is None else by_version.get(production.version)
        pointers = ", ".join(f"{a} -> {s.version}" for a, s in sorted(listing.aliases.items()))
        newest = listing.versions[-1].version if listing.versions else None
        rows.append([name, str(len(listing.versions)), cell(newest), pointers or MISSING,
                     score(current, "dev"), score(current, "test")])
    head = ["TASK", "VERSIONS", "NEWEST", "ALIASES", "PRODUCTION DEV", "PRODUCTION TEST"]
    return f"registry {uri}\n\n" + table(head, rows)


def versions_table(uri: str, task: str, listing: TaskListing) -> str:
    """One row per version of `task`, oldest first, with the aliases pointing at it."""
    if not listing.versions:
        return f"registry {uri}: task {task} has no versions"
    rows = [
        [str(m.version), m.created_at, str(m.prompt_length), cell(m.init), score(m, "dev"),
         score(m, "test"), short_data_version(m.dataset_version),
         cell(_aliases_at(listing.aliases, m.version))]
        for m in listing.versions
    ]
    head = ["VERSION", "CREATED_AT", "PROMPT_LENGTH", "INIT", "DEV", "TEST", "DATA", "ALIASES"]
    return f"registry {uri}, task {task}\n\n" + table(head, rows)


def manifest_block(m: Manifest, uri: str | None = None) -> str:
    """The manifest as titled key/value blocks: the prompt, its lineage, its verbalizer, then
    metrics and hyperparameters flattened to dotted keys. `uri` names the registry it is in."""
    values = m.to_dict() | {"shape": str(m.shape)}  # "[P, E]" rather than a bare "P, E"
    where = f" in registry {uri}" if uri else ""
    blocks = [
        f"task {m.task}, version {m.version}{where}",
        key_values("prompt", [(k, values[k]) for k in _PROMPT_FIELDS]),
        key_values("lineage", [(k, values[k]) for k in _LINEAGE_FIELDS]
                   + flatten(m.data_source, "data_source.")),
        key_values("verbalizer", [(k, values[k]) for k in _VERBALIZER_FIELDS]),
        key_values("metrics", flatten(m.metrics)),
        key_values("hyperparameters", flatten(m.hyperparameters)),
    ]
    return "\n\n".join(blocks)


def alias_block(state: AliasState) -> str:
    """Where the alias points, and its moves, oldest first."""
    rows = [[str(e["seq"]), str(e["version"]), cell(e["previous"]), e["moved_at"]]
            for e in state.history]
    moves = "1 move" if state.seq == 1 else f"{state.seq} moves"
    title = f"alias {state.alias} -> version {state.version} ({moves})"
    return title + "\n" + table(["SEQ", "VERSION", "PREVIOUS", "MOVED_AT"], rows)
