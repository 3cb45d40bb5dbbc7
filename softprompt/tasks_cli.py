"""`softprompt tasks ...` shows the task catalogue (the spec files of tasks/) to people.

    list        every spec with its format, metric, label words, splits and status
    show NAME   one spec's fields, its splits read from the data, and a rendered example
    validate    every problem of the specs and their data, one a line
    new NAME    a first spec drafted from a data file (softprompt.task_sniff)

Validation reuses softprompt.tasks (parse_spec) and softprompt.task_data (the readers). A spec's
fields are checked one at a time, each beside a valid skeleton for the others, so that a spec
with several independent mistakes gets one message for each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from softprompt.tasks import SPLITS, TASKS_DIR, TaskDataError, default_data_dir, parse_spec

# The fields a spec may have (docs/tasks.md); parse_spec ignores others, so a typo is a warning.
SPEC_FIELDS = ("name", "format", "splits", "template", "label_field", "labels", "metric",
               "positive_label", "description", "tsv", "skip_malformed_rows", "carve_dev", "hub")
# Valid values for every required field: a field is checked in place of its skeleton value.
SKELETON = {"name": "x", "format": "jsonl", "splits": {"train": "x/train.jsonl"},
            "template": "{text}", "label_field": "label", "labels": {"0": "a", "1": "b"}}
# Fields checked together because one's rules depend on another's value.
FIELD_GROUPS = (("name",), ("format",), ("splits",), ("template",), ("label_field",), ("labels",),
                ("metric", "positive_label", "labels"), ("tsv", "format"),
                ("skip_malformed_rows",), ("carve_dev", "splits"), ("hub",), ("description",))


@dataclass
class Report:
    """One spec checked, with its problems (one line each), warnings, and split sizes."""

    name: str
    spec_file: str
    spec: object = None  # the TaskSpec when the spec itself is valid
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    examples: dict[str, int] = field(default_factory=dict)  # split -> examples (data read)
    skipped: int = 0  # malformed rows skipped (skip_malformed_rows)


def tasks_dir(given: str | None) -> Path:
    """The tasks folder as softprompt.tasks.load_spec resolves it."""
    return Path(given or os.environ.get("SOFTPROMPT_TASKS_DIR") or TASKS_DIR)


def _key_lines(text: str) -> dict[str, int]:
    """Line number of each top-level key of a spec's YAML (aliases were refused before)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value}


def _at_line(message: str, where: str, group: tuple[str, ...], lines: dict[str, int]) -> str:
    """`message` with the line of the field it names after the spec file name."""
    named = re.search(r"field '([^'.]+)", message)
    key = named.group(1) if named and named.group(1) in lines else group[0]
    prefix = f"{where}: "
    if key in lines and message.startswith(prefix):
        return f"{where}:{lines[key]}: {message[len(prefix):]}"
    return message


def _line_of(message: str) -> int:
    """The spec line a problem names, to list problems top to bottom, missing fields last."""
    found = re.match(r".*?\.ya?ml:(\d+): ", message)
    return int(found.group(1)) if found else 1 << 30


def spec_problems(raw: object, text: str, where: str, task: str) -> list[str]:
    """Every problem of a spec dict, one message each, each field checked by parse_spec."""
    from softprompt.data_source import parse_spec_text

    if not isinstance(raw, dict):
        try:
            parse_spec(raw, where)
        except TaskDataError as err:
            return [str(err)]
        return []  # not reached: parse_spec refuses anything but a mapping
    lines = _key_lines(text)
    problems: list[str] = []
    for group in FIELD_GROUPS:
        candidate = {k: v for k, v in SKELETON.items() if k not in group}
        candidate |= {k: raw[k] for k in group if k in raw}
        try:
            if "name" in group:  # the name must also be the file's: parse_spec_text checks it
                parse_spec_text(task, yaml.safe_dump(candidate), where)
            else:
                parse_spec(candidate, where)
        except TaskDataError as err:
            message = _at_line(str(err), where, group, lines)
            if message not in problems:
                problems.append(message)
    problems.sort(key=_line_of)
    if not problems:  # a problem across fields the groups keep apart still shows
        try:
            parse_spec_text(task, text, where)
        except TaskDataError as err:
            problems.append(str(err))
    return problems


def _data_problems(report: Report, data_dir: str | None) -> None:
    """Reads the valid spec's data into split sizes, or one problem per bad data file."""
    from softprompt.task_data import load_task, read_examples

    spec = report.spec
    stats: dict = {}
    try:
        data = load_task(spec, data_dir, stats)
    except TaskDataError as err:
        # The readers stop at a file's first problem; each file is read again for its own.
        root = Path(data_dir) if data_dir else default_data_dir()
        for rel in spec.splits.values():
            try:
                read_examples(spec, root / rel)
            except TaskDataError as file_err:
                report.problems.append(str(file_err))
        if not report.problems:
            report.problems.append(str(err))
        return
    report.examples = {split: len(data[split]) for split in sorted(data, key=_split_order)}
    report.skipped = len(stats.get("skipped_rows", []))


def _split_order(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)


def check_task(name: str, tasks: Path, data_dir: str | None = None, data: bool = True) -> Report:
    """A spec (a task name in `tasks`, or a spec file path) checked field by field, then its
    data when `data` and the spec is valid."""
    from softprompt.tasks import read_spec_file, spec_path, spec_yaml

    try:
        path = spec_path(name, tasks)
    except TaskDataError as err:
        return Report(name, "", problems=[str(err)])
    report = Report(path.stem, str(path))
    try:
        text = read_spec_file(path)
        raw = spec_yaml(text, str(path))
    except TaskDataError as err:
        report.problems.append(str(err))
        return report
    report.problems = spec_problems(raw, text, str(path), path.stem)
    if isinstance(raw, dict):
        lines = _key_lines(text)
        for key in raw:
            if key not in SPEC_FIELDS:
                at = f"{path}:{lines[key]}" if key in lines else str(path)
                report.warnings.append(f"{at}: unknown field {key!r} is ignored; fields: "
                                       f"{', '.join(SPEC_FIELDS)}")
    if report.problems:
        return report
    report.spec = parse_spec(raw, str(path))
    if "dev" not in report.spec.splits and not report.spec.carve_dev:
        report.warnings.append(f"{path}: no dev split; training needs one (a file or carve_dev)")
    if data:
        _data_problems(report, data_dir)
    return report


def spec_names(tasks: Path) -> list[str]:
    """The task names of the spec files in the folder `tasks`, sorted."""
    if not tasks.is_dir():
        raise TaskDataError(f"task catalogue {tasks}: not a directory")
    return sorted(p.stem for p in tasks.glob("*.yaml"))


# ---------------------------------------------------------------------------- output
def _table(header: list[str], rows: list[list[str]]) -> str:
    """Rows aligned under `header`; the last column runs free (it holds errors)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def _short(problem: str, spec_file: str) -> str:
    """A problem without its spec file name, for a table row that names the task already."""
    rest = problem.removeprefix(spec_file)
    if rest == problem:
        return problem
    return re.sub(r"^:(\d+):", r"line \1:", rest).lstrip(":").strip()


def _list_row(report: Report) -> dict:
    spec, problems = report.spec, report.problems
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    status = _short(problems[0], report.spec_file) + more if problems else "OK"
    splits = sorted(spec.splits, key=_split_order) + ["dev (carved)"] * bool(spec.carve_dev) \
        if spec else []
    return {"name": report.name, "format": spec.format if spec else "-",
            "metric": spec.metric if spec else "-", "labels": spec.label_words if spec else [],
            "splits": splits, "status": status, "problems": problems,
            "spec_file": report.spec_file}


def _cmd_list(args: argparse.Namespace) -> int:
    folder = tasks_dir(args.tasks_dir)
    rows = [_list_row(check_task(name, folder, data=False)) for name in spec_names(folder)]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    header = ["NAME", "FORMAT", "METRIC", "LABELS", "SPLITS", "STATUS"]
    print(_table(header, [[r["name"], r["format"], r["metric"], "/".join(r["labels"]) or "-",
                           ", ".join(r["splits"]) or "-", r["status"]] for r in rows]))
    bad = sum(r["status"] != "OK" for r in rows)
    print(f"\n{len(rows)} task spec(s) in {folder}, {bad} invalid; data is not read here: "
          "`softprompt tasks validate` reads it")
    return 0


def _print_report(report: Report) -> None:
    """Prints validate's lines for one task, warnings first, then problems or split sizes."""
    for warning in report.warnings:
        print(f"warning: {warning}")
    for problem in report.problems:
        print(problem)
    if not report.problems:
        sizes = ", ".join(f"{split} {n:,}" for split, n in report.examples.items())
        skipped = report.skipped
        note = f"; {skipped} malformed row(s) skipped (skip_malformed_rows)" if skipped else ""
        print(f"ok: {report.name}: {sizes} examples{note}")


def _cmd_validate(args: argparse.Namespace) -> int:
    folder = tasks_dir(args.tasks_dir)
    names = args.names or spec_names(folder)
    reports = [check_task(name, folder, args.data_dir) for name in names]
    for report in reports:
        _print_report(report)
    bad = [r for r in reports if r.problems]
    print(f"{len(reports)} task(s) checked: {len(reports) - len(bad)} valid, {len(bad)} with "
          f"problems ({sum(len(r.problems) for r in bad)} problem(s))")
    return 1 if bad else 0


def _spec_fields(spec) -> dict:
    """Every field of a TaskSpec as the spec file names it (tsv nested), and what follows."""
    fields = asdict(spec)
    fields["tsv"] = {"header": fields.pop("tsv_header"), "columns": fields.pop("tsv_columns")}
    fields["template_fields"] = list(dict.fromkeys(spec.fields()))
    fields["label_words"] = spec.label_words
    order = ("name", "description", "format", "metric", "positive_label", "template",
             "template_fields", "label_field", "labels", "label_words", "splits", "tsv",
             "skip_malformed_rows", "carve_dev", "hub", "spec_file", "digest")
    return {key: fields[key] for key in order}


def _show_data(spec, data_dir: str | None) -> dict:
    """Split files and sizes (skipped rows counted) and one rendered example, or the error."""
    from softprompt.task_data import load_task
    root = Path(data_dir) if data_dir else default_data_dir()
    stats: dict = {}
    try:
        data = load_task(spec, data_dir, stats)
    except TaskDataError as err:
        return {"data_dir": str(root), "error": str(err)}
    skipped = stats.get("skipped_rows", [])
    splits = []
    for split in sorted(data, key=_split_order):
        if split in spec.splits:
            file = str(root / spec.splits[split])
            count = sum(m.startswith(f"{file}:") for m in skipped)
        else:
            file = f"carved from {spec.carve_dev.get('from', 'train')} (carve_dev)"
            count = 0
        splits.append({"split": split, "file": file, "examples": len(data[split]),
                       "skipped_rows": count})
    first = data[splits[0]["split"]][0]
    example = {"source": first.source, "input": first.input, "target": first.target}
    return {"data_dir": str(root), "splits": splits, "example": example}


def _cmd_show(args: argparse.Namespace) -> int:
    report = check_task(args.name, tasks_dir(args.tasks_dir), data=False)
    if report.spec is None:
        for problem in report.problems:
            print(f"error: {problem}")
        return 1
    shown = {"spec": _spec_fields(report.spec), "data": _show_data(report.spec, args.data_dir)}
    if args.format == "json":
        print(json.dumps(shown, indent=2))
    else:
        _print_show(shown)
    return 1 if "error" in shown["data"] else 0


def _print_show(shown: dict) -> None:
    spec, data = shown["spec"], shown["data"]
    shown_as = {"labels": ", ".join(f"{k} -> {v}" for k, v in spec["labels"].items()),
                "label_words": ", ".join(spec["label_words"]),
                "template_fields": ", ".join(spec["template_fields"])}
    plain = [key for key, value in spec.items() if isinstance(value, str) and "\n" not in value]
    rows = [[key, shown_as.get(key, value if key in plain else json.dumps(value))]
            for key, value in spec.items()]
    print(_table(["FIELD", "VALUE"], rows))
    print(f"\ndata in {data['data_dir']}")
    if "error" in data:
        print(f"error: {data['error']}")
        return
    print(_table(["SPLIT", "EXAMPLES", "SKIPPED", "FILE"],
                 [[s["split"], f"{s['examples']:,}", str(s["skipped_rows"]), s["file"]]
                  for s in data["splits"]]))
    example = data["example"]
    print(f"\nexample ({example['source']}):")
    print("  input:  " + example["input"].replace("\n", "\n          "))
    print(f"  target: {example['target']}")


def _cmd_new(args: argparse.Namespace) -> int:
    from softprompt.data_source import parse_spec_text
    from softprompt.task_sniff import draft_spec, sniff_data, spec_splits

    folder = tasks_dir(args.tasks_dir)
    out = folder / f"{args.name}.yaml"
    parse_spec(SKELETON | {"name": args.name}, str(out))  # the name's rules, before anything
    if out.exists():
        raise TaskDataError(f"{out} exists; edit it, or pick another task name")
    root = Path(args.data_dir) if args.data_dir else default_data_dir()
    splits = spec_splits(Path(args.from_file), root, args.name)
    sniffed = sniff_data(Path(args.from_file))
    text = draft_spec(args.name, sniffed, splits)
    parse_spec_text(args.name, text, str(out))  # the draft is valid before it is written
    folder.mkdir(parents=True, exist_ok=True)
    with out.open("x", encoding="utf-8") as f:  # "x": never overwrite a spec written meanwhile
        f.write(text)
    layout = "jsonl" if sniffed.format == "jsonl" else \
        f"tsv {'with' if sniffed.header else 'without'} a header line"
    print(f"wrote {out}: {layout}, {sniffed.rows:,} rows, label column {sniffed.label!r} "
          f"({', '.join(sniffed.label_values)}), text column(s) {', '.join(sniffed.text_columns)}")
    report = check_task(str(out), folder, args.data_dir)
    _print_report(report)
    print(f"next: edit the lines marked EDIT in {out}, then `softprompt tasks validate "
          f"{args.name}`")
    return 1 if report.problems else 0


# ---------------------------------------------------------------------------- parsers
EPILOGS = {
    "list": "example:\n  softprompt tasks list\n  softprompt tasks list --tasks-dir my_tasks "
            "--format json",
    "show": "example:\n  softprompt tasks show sst2 --data-dir ../shared/data\n"
            "  softprompt tasks show rte --format json",
    "validate": "examples:\n  softprompt tasks validate                  # every spec in tasks/\n"
                "  softprompt tasks validate sst2 rte --data-dir ../shared/data\n\n"
                "exit status: 0 when every spec and its data are valid, 1 otherwise",
    "new": "example:\n  mkdir -p ../shared/data/reviews && cp reviews.tsv "
           "../shared/data/reviews/train.tsv\n"
           "  softprompt tasks new reviews --from ../shared/data/reviews/train.tsv\n"
           "  $EDITOR tasks/reviews.yaml && softprompt tasks validate reviews\n\n"
           "The file must lie under DATA_DIR/NAME/. A sibling dev or test file of the same\n"
           "suffix becomes that split; without a dev file, 10% of train is carved out.",
}
HELP = {"list": "the catalogue: every spec's format, metric, labels, splits and status",
        "show": "one spec's fields, its splits (data read) and a rendered example",
        "validate": "every problem of specs and their data, one a line (exit 1 if any)",
        "new": "draft tasks/NAME.yaml from a jsonl or tsv data file, then validate it"}


def add_commands(sub) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    tasks = sub.add_parser("tasks", help="the task catalogue: list, show, validate, new",
                           description=__doc__, formatter_class=raw,
                           epilog="example:\n  softprompt tasks list")
    commands = tasks.add_subparsers(dest="tasks_command", required=True)
    parsers = {name: commands.add_parser(name, help=text, description=text, epilog=EPILOGS[name],
                                         formatter_class=raw) for name, text in HELP.items()}
    for name, p in parsers.items():
        p.add_argument("--tasks-dir", default=None,
                       help="spec folder (default: $SOFTPROMPT_TASKS_DIR, else the repo's tasks/)")
        if name != "list":
            p.add_argument("--data-dir", default=None,
                           help="data folder (default: $SOFTPROMPT_DATA_DIR or ../shared/data)")
        if name in ("list", "show"):
            p.add_argument("--format", choices=("table", "json"), default="table")
    parsers["show"].add_argument("name", help="task name or spec file path")
    parsers["validate"].add_argument("names", nargs="*", metavar="NAME",
                                     help="task names or spec paths (default: every spec)")
    parsers["new"].add_argument("name", help="the new task's name ([a-z0-9][a-z0-9_-]*)")
    parsers["new"].add_argument("--from", dest="from_file", required=True, metavar="FILE",
                                help="a jsonl or tsv data file under DATA_DIR/NAME/")
    for name, func in (("list", _cmd_list), ("show", _cmd_show), ("validate", _cmd_validate),
                       ("new", _cmd_new)):
        parsers[name].set_defaults(func=func)
