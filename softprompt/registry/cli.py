"""`softprompt push|pull|list|show|promote|export-peft|import-peft` and `softprompt registry gc`:
the registry from the shell.

Every command takes --registry URI (default $SOFTPROMPT_REGISTRY, else ./registry). `list` and
`show` print tables for people (registry.tables), or with `--format json` the records as JSON;
the other commands print JSON on stdout. An error is one `error: ...` line on stderr and exit
status 2. S3 credentials and endpoint come from the standard AWS chain (AWS_* variables,
profiles, roles).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import asdict


def _guard(fn):
    """Registry errors, and file errors on the paths given (--run-dir, --out, --adapter), become
    one `error: ...` line and exit status 2."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        from softprompt.registry import RegistryError

        try:
            return fn(args)
        except (RegistryError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return run


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _open(args: argparse.Namespace):
    from softprompt.registry import open_registry

    return open_registry(args.registry, cache_dir=args.cache_dir)


@_guard
def _cmd_push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from softprompt.prompt import load_prompt
    from softprompt.registry import InvalidArtifactError, lineage_from_run

    lineage = lineage_from_run(args.run_dir, dataset_version=args.dataset_version,
                               code_version=args.code_version)
    task = args.task or lineage["task"]
    lineage["task"] = task  # a run may be published under another registry name
    norm = lineage["metrics"].get("prompt_norm") or {}
    if norm.get("exploded"):
        raise InvalidArtifactError(
            f"{Path(args.run_dir) / 'result.json'}: the prompt's largest row norm is "
            f"{norm.get('ratio', 0):.4g} times the vocabulary's; the run diverged, so it is not "
            "pushed"
        )
    if args.alias:
        from softprompt.registry.promotion import refuse_below_zero_shot

        refuse_below_zero_shot(lineage["metrics"], Path(args.run_dir) / "result.json", args.alias)
    prompt = load_prompt(Path(args.run_dir) / "prompt.safetensors")
    reg = _open(args)
    m = reg.publish(task, prompt, lineage)
    out = {"manifest": m.to_dict()}
    if args.alias:
        out["alias"] = asdict(reg.promote(task, args.alias, m.version))
    _print(out)
    return 0


@_guard
def _cmd_pull(args: argparse.Namespace) -> int:
    from softprompt.prompt import save_prompt

    prompt, m = _open(args).pull(args.task, args.ref, expected_fingerprint=args.fingerprint)
    if args.out:
        metadata = {"task": m.task, "version": str(m.version), "blob_sha256": m.blob_sha256}
        save_prompt(prompt, args.out, metadata)
    _print({"manifest": m.to_dict(), "out": args.out})
    return 0


@_guard
def _cmd_list(args: argparse.Namespace) -> int:
    from softprompt.registry.tables import TaskListing, tasks_table, versions_table

    reg = _open(args)
    if args.format == "table":
        tasks = [args.task] if args.task else reg.list_tasks()
        listings = {t: TaskListing(reg.list_versions(t), reg.aliases(t)) for t in tasks}
        if args.task:
            print(versions_table(reg.uri, args.task, listings[args.task]))
        else:
            print(tasks_table(reg.uri, listings))
        return 0
    if args.task is None:
        _print({"registry": reg.uri, "tasks": reg.list_tasks()})
        return 0
    aliases = reg.aliases(args.task)
    versions = [
        {"version": m.version, "created_at": m.created_at, "blob_sha256": m.blob_sha256,
         "shape": m.shape, "base_model": m.base_model, "metrics": m.metrics,
         "aliases": sorted(a for a, s in aliases.items() if s.version == m.version)}
        for m in reg.list_versions(args.task)
    ]
    _print({"registry": reg.uri, "task": args.task, "versions": versions,
            "aliases": {a: s.version for a, s in aliases.items()}})
    return 0


@_guard
def _cmd_show(args: argparse.Namespace) -> int:
    from softprompt.registry.records import parse_ref
    from softprompt.registry.tables import alias_block, manifest_block

    reg = _open(args)
    manifest = reg.manifest(args.task, args.ref)
    state = reg.alias(args.task, args.ref) if isinstance(parse_ref(args.ref), str) else None
    if args.format == "table":
        blocks = [manifest_block(manifest, reg.uri)] + ([alias_block(state)] if state else [])
        print("\n\n".join(blocks))
        return 0
    out = {"manifest": manifest.to_dict()}
    if state is not None:
        out["alias"] = asdict(state)
    _print(out)
    return 0


@_guard
def _cmd_promote(args: argparse.Namespace) -> int:
    reg = _open(args)
    if args.rollback:
        from softprompt.registry.promotion import rollback

        if args.expect_new:
            print("error: --rollback needs an alias that exists; drop --expect-new",
                  file=sys.stderr)
            return 2
        done = rollback(reg, args.task, args.alias, expected_version=args.expected_version)
        print(f"rolled back {args.task}/{args.alias}: version {done.from_version} -> "
              f"{done.to_version} (path now {done.path})", file=sys.stderr)
        _print(asdict(done.state))
        return 0
    if args.expect_new:
        state = reg.promote(args.task, args.alias, args.version, expected_version=None)
    elif args.expected_version is not None:
        state = reg.promote(args.task, args.alias, args.version,
                            expected_version=args.expected_version)
    else:
        state = reg.promote(args.task, args.alias, args.version)
    print(f"moved {args.task}/{args.alias}: version {state.previous} -> {state.version}",
          file=sys.stderr)
    _print(asdict(state))
    return 0


@_guard
def _cmd_export_peft(args: argparse.Namespace) -> int:
    from softprompt.model import load_frozen_lm
    from softprompt.peft_interop import export_peft

    out, m = export_peft(_open(args), args.task, args.ref, args.out, load_frozen_lm(args.model))
    _print({"adapter": str(out), "task": m.task, "version": m.version})
    return 0


@_guard
def _cmd_import_peft(args: argparse.Namespace) -> int:
    from softprompt.model import load_frozen_lm
    from softprompt.peft_interop import import_peft

    reg = _open(args)
    given = (("dataset_version", args.dataset_version), ("code_version", args.code_version))
    lineage = {k: v for k, v in given if v} | _verbalizer(reg, args.task, args.spec)
    m = import_peft(reg, args.task, args.adapter, load_frozen_lm(args.model), lineage)
    out = {"manifest": m.to_dict()}
    if args.alias:
        out["alias"] = asdict(reg.promote(args.task, args.alias, m.version))
    _print(out)
    return 0


def _verbalizer(reg, task: str, spec_name: str | None) -> dict:
    """The template, label words and metric an imported adapter is published with.

    They come from the task spec `spec_name`, else from the task's newest version."""
    from softprompt.registry import InvalidArtifactError

    if spec_name is not None:
        from softprompt.tasks import TaskDataError, load_spec

        try:
            spec = load_spec(spec_name)
        except (TaskDataError, ValueError) as err:
            raise InvalidArtifactError(f"--spec {spec_name}: {err}") from err
        return {"label_words": spec.label_words, "template": spec.template,
                "metric": spec.metric, "spec_sha256": spec.digest or None}
    versions = reg.list_versions(task)
    if not versions:
        raise InvalidArtifactError(
            f"{reg.uri}: task {task} has no version to take the template and label words from; "
            "pass --spec"
        )
    newest = versions[-1]
    return {"label_words": newest.label_words, "template": newest.template,
            "metric": newest.metric, "spec_sha256": newest.spec_sha256}


@_guard
def _cmd_gc(args: argparse.Namespace) -> int:
    from softprompt.registry.gc import DEFAULT_MIN_AGE_SECONDS, collect_garbage

    min_age = DEFAULT_MIN_AGE_SECONDS if args.min_age_seconds is None else args.min_age_seconds
    report = collect_garbage(_open(args), min_age, dry_run=args.dry_run)
    _print(report.summary())
    return 0


# Worked examples, shown at the end of each command's --help.
EXAMPLES = {
    "list": """examples:
  softprompt list --registry s3://bucket/prompts
      one row per task: versions, newest version, aliases, production's dev/test score
  softprompt list --registry s3://bucket/prompts --task sst2
      one row per version of sst2: created_at, prompt length, init, scores, data, aliases
  softprompt list --task sst2 --format json | jq '.aliases.production'
      the same records as JSON, for scripts
""",
    "show": """examples:
  softprompt show --registry s3://bucket/prompts --task sst2
      the manifest production points to (metrics, lineage, label words, template), and the
      alias's history of moves
  softprompt show --task sst2 --ref 3
      version 3's manifest
  softprompt show --task sst2 --ref staging --format json
      the manifest and alias record as JSON, for scripts
""",
    "promote": """examples:
  softprompt promote --task sst2 --alias production --version 4
      point production at version 4
  softprompt promote --task sst2 --alias production --version 4 --expected-version 3
      only if production still points at version 3 (else exit status 2, nothing moved)
  softprompt promote --task sst2 --alias production --rollback
      back to the version production pointed at before its last move; a second --rollback
      goes one further back along the alias's path (versions it came through, each once),
      rather than return to where the first one started
""",
    "push": """examples:
  softprompt push --registry s3://bucket/prompts --run-dir runs/sst2 --alias staging
      publish the run's best prompt as sst2's next version and point staging at it (a run
      whose prompt diverged or whose norm exploded is refused)
""",
    "pull": """examples:
  softprompt pull --registry s3://bucket/prompts --task sst2 --out prompt.safetensors
      production's prompt, verified against its sha256 (from the cache when the store is
      down), usable as `softprompt evaluate --task sst2 --prompt prompt.safetensors`
""",
    "gc": """examples:
  softprompt registry gc --registry s3://bucket/prompts --dry-run
      list the temp files and unreferenced blobs older than an hour, remove nothing
  softprompt registry gc --registry /srv/registry --min-age-seconds 86400
      remove those older than a day; a blob any manifest names is always kept
""",
    "import-peft": """examples:
  softprompt import-peft --task sst2 --adapter sst2-adapter --model smollm2-135m --spec sst2
      publish a PEFT prompt-tuning adapter trained on that model as sst2's next version,
      with sst2's template and label words
""",
    "export-peft": """examples:
  softprompt export-peft --task sst2 --ref production --out sst2-adapter --model smollm2-135m
      writes sst2-adapter/ with adapter_config.json, adapter_model.safetensors and a README.md
      model card; load it with peft.PeftModel.from_pretrained(base_model, "sst2-adapter")
""",
}


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table: for people; json: the records, for scripts")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Shows defaults (unless the help text names its own), and keeps the examples in the
    epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False):
            return text
        return super()._get_help_string(action)


def _subparser(sub, name: str, help_: str, task: bool = True,
               ref: bool = False) -> argparse.ArgumentParser:
    """A registry subcommand with --registry and --cache-dir (and --task, --ref if asked), and
    the examples of EXAMPLES[name] as its epilog."""
    p = sub.add_parser(name, help=help_, description=help_, formatter_class=_HelpFormatter,
                       epilog=EXAMPLES.get(name))
    p.add_argument("--registry", default=None,
                   help="directory, file:///path or s3://bucket/prefix "
                        "(default: $SOFTPROMPT_REGISTRY, else ./registry)")
    p.add_argument("--cache-dir", default=None,
                   help="local cache of pulled prompts (default: $SOFTPROMPT_REGISTRY_CACHE "
                        "or ~/.cache/softprompt/registry)")
    if task:
        p.add_argument("--task", required=True, help="task name: [a-z0-9][a-z0-9_-]{0,63}")
    if ref:
        p.add_argument("--ref", default="production", help="version number or alias name")
    return p


def add_commands(sub) -> None:
    """Adds the registry subcommands to the `softprompt` parser's subparsers."""
    parser = functools.partial(_subparser, sub)
    p = parser("push", "publish a trained run's prompt as the task's next version", task=False)
    p.add_argument("--run-dir", required=True, help="a `softprompt train` run directory")
    p.add_argument("--task", default=None, help="registry task name (default: the run's task)")
    p.add_argument("--alias", default=None,
                   help="also point this alias (e.g. staging) at the new version")
    p.add_argument("--dataset-version", default=None,
                   help="data version to record (e.g. the DVC hash)")
    p.add_argument("--code-version", default=None,
                   help="code version to record (default: the git commit)")
    p.set_defaults(func=_cmd_push)

    p = parser("pull", "fetch a verified prompt (cached; works offline from the cache)", ref=True)
    p.add_argument("--out", default=None,
                   help="write the prompt here as safetensors (usable as --prompt)")
    p.add_argument("--fingerprint", default=None,
                   help="refuse unless the prompt's base-model fingerprint is this")
    p.set_defaults(func=_cmd_pull)

    p = parser("list", "list tasks, or a task's versions and aliases", task=False)
    p.add_argument("--task", default=None, help="list this task's versions")
    _add_format(p)
    p.set_defaults(func=_cmd_list)

    p = parser("show", "print a version's manifest (and the alias record for an alias)", ref=True)
    _add_format(p)
    p.set_defaults(func=_cmd_show)

    p = parser("promote", "move an alias to a version, or back one step (compare-and-swap)")
    p.add_argument("--alias", required=True, help="alias name, e.g. production or staging")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--version", type=int, help="version to point at")
    target.add_argument("--rollback", action="store_true",
                        help="move back to the version before the current one on the alias's "
                             "path (its history of distinct versions); repeat to go further")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--expected-version", type=int, default=None,
                       help="move (or roll back) only if the alias points here now")
    group.add_argument("--expect-new", action="store_true",
                       help="move only if the alias does not exist yet")
    p.set_defaults(func=_cmd_promote)

    _add_peft_commands(parser)
    _add_gc_command(sub)


def _add_peft_commands(parser) -> None:
    p = parser("export-peft", "write a registered prompt as a PEFT prompt-tuning adapter", ref=True)
    p.add_argument("--out", required=True, help="adapter folder to write")
    p.add_argument("--model", default="smollm2-135m",
                   help="the base model (its fingerprint must match the prompt's)")
    p.set_defaults(func=_cmd_export_peft)

    p = parser("import-peft", "publish a PEFT prompt-tuning adapter as the task's next version")
    p.add_argument("--adapter", required=True,
                   help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--model", default="smollm2-135m",
                   help="the base model the adapter was trained on")
    p.add_argument("--alias", default=None, help="also point this alias at the new version")
    p.add_argument("--spec", default=None,
                   help="task spec (name or path) whose template, label words and metric to "
                        "record (default: those of the task's newest version in the registry)")
    p.add_argument("--dataset-version", default=None)
    p.add_argument("--code-version", default=None)
    p.set_defaults(func=_cmd_import_peft)


def _add_gc_command(sub) -> None:
    """`softprompt registry gc`."""
    group = sub.add_parser("registry", help="registry maintenance (gc)")
    p = _subparser(group.add_subparsers(dest="registry_command", required=True), "gc",
                   "remove temp files and unreferenced blobs left by killed publishers",
                   task=False)
    p.add_argument("--min-age-seconds", type=float, default=None,
                   help="grace period: only what is at least this old goes, so that a publish "
                        "in progress keeps its blob (default: 3600, an hour)")
    p.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    p.set_defaults(func=_cmd_gc)
