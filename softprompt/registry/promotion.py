"""Registering a pipeline's selected prompt, and the quality gate that decides whether an alias
moves to it.

Every trained prompt is published (a new immutable version with its lineage and metrics). The
alias (`production`) moves to it only if its dev score beats the alias's current prompt by more
than `min_improvement`, or if the alias points nowhere yet. The move is a compare-and-swap on the
alias's version, so a concurrent promotion fails this one instead of being overwritten. A prompt
whose norm exploded (its training result's `prompt_norm`, see softprompt.prompt.prompt_norm) is
published but never promoted, whatever its score. Nor is a prompt whose dev score is below the
template alone's (zero-shot: the frozen LM with no soft prompt, scored by softprompt.evaluation
on the same dev examples), whatever the alias holds: such a prompt is worse than no prompt.

A rollback (`rollback`) moves an alias back to the version it pointed at before its last move,
and a second rollback goes one further back rather than return to where the first one started:
it follows the alias's path (`alias_path`), its history of distinct versions with the loops cut
out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from softprompt.registry.errors import AliasConflictError, InvalidArtifactError, NotFoundError
from softprompt.registry.lineage import lineage_from_run
from softprompt.registry.records import AliasState, Manifest
from softprompt.registry.registry import Registry


@dataclass(frozen=True)
class GateDecision:
    """Whether the alias moves to the new version, and a sentence saying why.

    `below_zero_shot` is set when the new dev score is below the template alone's, the reason
    then names that zero-shot score."""

    promoted: bool
    reason: str
    previous_version: int | None
    previous_score: float | None
    below_zero_shot: bool = False


def quality_gate(new_score: float, current: Manifest | None, alias: str,
                 min_improvement: float, prompt_norm: dict | None = None,
                 zero_shot_score: float | None = None) -> GateDecision:
    """Promote when the alias has no prompt, or no dev score to beat, or a lower one. Never when
    `prompt_norm` (the training result's record) says the prompt exploded, nor when `new_score`
    is below `zero_shot_score` (the template alone's dev score), checked in that order."""
    kept = None if current is None else current.version
    kept_score = None if current is None else current.metrics.get("dev", {}).get("score")
    if prompt_norm is not None and prompt_norm.get("exploded", False):
        ratio = prompt_norm.get("ratio")
        reason = (f"the new prompt's norm exploded ({ratio:.4g} times the vocabulary's largest "
                  "row); refused")
        return GateDecision(False, reason, kept, kept_score)
    if zero_shot_score is not None and new_score < zero_shot_score:
        reason = f"the template alone (zero-shot dev {zero_shot_score:.4f}); refused"
        return GateDecision(False, reason, kept, kept_score, below_zero_shot=True)
    if current is None:
        return GateDecision(True, f"{alias} had no prompt", None, None)
    if kept_score is None:
        return GateDecision(True, f"{alias} v{kept} has no dev score", kept, None)
    reason = f"{alias} v{kept} dev {kept_score:.4f} + min_improvement {min_improvement}"
    return GateDecision(new_score > kept_score + min_improvement, reason, kept, kept_score)


def refuse_below_zero_shot(metrics: dict, where, alias: str) -> None:
    """Raises InvalidArtifactError when a run's metrics (its result.json, at `where`) show a dev
    score below the template alone's: an alias never moves to a prompt worse than no prompt."""
    dev = (metrics.get("dev") or {}).get("score")
    zero_shot = ((metrics.get("zero_shot") or {}).get("dev") or {}).get("score")
    if dev is not None and zero_shot is not None and dev < zero_shot:
        raise InvalidArtifactError(
            f"{where}: dev score {dev:.4f} is below the template alone's ({zero_shot:.4f}); not "
            f"pushed to alias {alias!r} (push without --alias to keep it in the registry)"
        )


def register_with_gate(registry: Registry, task: str, prompt, lineage: dict, new_score: float,
                       alias: str, min_improvement: float,
                       zero_shot_score: float | None = None) -> dict:
    """Publishes `prompt` [P, E] with `lineage`, then moves `alias` to it if the gate passes
    (`zero_shot_score`: the template alone's dev score, the least a promoted prompt reaches).

    Returns the registration record: task, version, alias, promoted, decision (a sentence),
    previous ({"version", "dev_score"} or None), zero_shot_dev, manifest (dict) and
    manifest_uri."""
    try:
        current = registry.manifest(task, alias)
    except NotFoundError:
        current = None
    manifest = registry.publish(task, prompt, lineage)
    norm = lineage.get("metrics", {}).get("prompt_norm")
    gate = quality_gate(new_score, current, alias, min_improvement, norm, zero_shot_score)
    if gate.promoted:
        registry.promote(task, alias, manifest.version, expected_version=gate.previous_version)
    kept = gate.previous_version
    decision = (f"promoted {alias} to v{manifest.version}" if gate.promoted else
                f"kept {alias} at v{kept}" if kept is not None else f"left {alias} unset")
    relation = "is below" if gate.below_zero_shot else "vs"
    decision += f": new v{manifest.version} dev {new_score:.4f} {relation} {gate.reason}"
    previous = None if current is None else {"version": kept, "dev_score": gate.previous_score}
    return {
        "registry_uri": registry.uri,
        "task": task,
        "version": manifest.version,
        "alias": alias,
        "promoted": gate.promoted,
        "decision": decision,
        "previous": previous,
        "zero_shot_dev": zero_shot_score,
        # The registry's layout, the same on every backend.
        "manifest_uri": "/".join([registry.uri.rstrip("/"), "prompts", task,
                                  str(manifest.version), "manifest.json"]),
        "manifest": manifest.to_dict(),
    }


def register_selected(registry: Registry, summary: dict, ensemble_dir: str, spec,
                      dataset_version: str | None, data_source: dict | None,
                      code_version: str | None, alias: str, min_improvement: float) -> dict:
    """Registers the ensemble member that `summary` (softprompt.evaluation) selected by dev
    score, with the dev/test scores of the evaluation passes, the ensemble's and the template
    alone's (when the summary has them), behind the quality gate. `code_version` None: the
    source's git commit."""
    from softprompt.prompt import load_prompt

    selected = summary["selected"]
    member_dir = os.path.join(ensemble_dir, summary["members"][selected["member"]]["dir"])
    lineage = lineage_from_run(member_dir, dataset_version=dataset_version,
                               code_version=code_version, spec=spec, data_source=data_source)
    # Whole prepared splits from the evaluation passes replace training's dev subset.
    lineage["metrics"].update(
        dev=selected["dev"],
        test=selected["test"],
        ensemble={"n_prompts": len(summary["members"]), "dev": summary["dev"]["ensemble"],
                  "test": summary["test"]["ensemble"]},
    )
    # Summaries written before zero-shot scoring existed have no "zero_shot"; the gate then
    # compares with the alias only.
    zero_shot = summary.get("zero_shot") or {}
    if zero_shot:
        lineage["metrics"]["zero_shot"] = {k: zero_shot[k] for k in ("dev", "test")
                                           if k in zero_shot}
    zero_shot_score = zero_shot.get("dev", {}).get("score")
    prompt = load_prompt(os.path.join(member_dir, "prompt.safetensors"))
    return register_with_gate(registry, spec.name, prompt, lineage, selected["dev"]["score"],
                              alias, min_improvement, zero_shot_score)


# ---------------------------------------------------------------------------- rollback
@dataclass(frozen=True)
class Rollback:
    """A rollback's move of `alias` from `from_version` to `to_version`, the alias record after
    it, and the path it walked back along (oldest first, ending at `to_version`)."""

    task: str
    alias: str
    from_version: int
    to_version: int
    path: list[int]
    state: AliasState


def alias_path(history: list[dict]) -> list[int]:
    """The versions that led to the alias's current one, each once, oldest first.

    It is the alias's history of moves with every loop cut out. A move to a version already on
    the path returns to it, so the versions after it drop off. A move to any other version
    appends it. Hence moves 1, 2, 3 give [1, 2, 3], then a move back to 2 gives [1, 2], and a
    move on to 4 gives [1, 2, 4]."""
    path: list[int] = []
    for entry in history:
        version = entry["version"]
        if version in path:
            del path[path.index(version) + 1 :]
        else:
            path.append(version)
    return path


def rollback(registry: Registry, task: str, alias: str,
             expected_version: int | None = None) -> Rollback:
    """Moves `alias` back one step along its path (see alias_path), so that repeated rollbacks
    walk further back rather than swap between the last two versions.

    The move is a compare-and-swap on the version read here (or on `expected_version` when
    given). A concurrent move makes it fail with AliasConflictError, and an alias whose path
    holds nothing before its current version is refused with NotFoundError."""
    state = registry.alias(task, alias)
    if expected_version is not None and state.version != expected_version:
        raise AliasConflictError(
            f"{registry.uri}: alias {task}/{alias} points to version {state.version}, not the "
            f"expected {expected_version}; not rolled back"
        )
    path = alias_path(state.history)
    if len(path) < 2:
        raise NotFoundError(
            f"{registry.uri}: alias {task}/{alias} has no version to roll back to: it points to "
            f"version {state.version}, the first on its path {path}"
        )
    target = path[-2]
    try:
        moved = registry.promote(task, alias, target, expected_version=state.version)
    except AliasConflictError as err:
        raise AliasConflictError(
            f"{err}; the rollback from version {state.version} to {target} was not done, since "
            "the alias moved meanwhile (look at it again before rolling back)"
        ) from None
    return Rollback(task, alias, state.version, target, path[:-1], moved)
