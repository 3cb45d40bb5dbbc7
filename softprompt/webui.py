"""`softprompt ui`: a read-only web page over a prompt registry.

Three kinds of page, rendered on the server from the registry's public reads (list_tasks,
list_versions, aliases, manifest):

  /                                       every task, its production version and scores
  /tasks/<task>                           every version of a task, and each alias's moves
  /tasks/<task>/<version>                 one version's lineage, hyperparameters, template,
                                          label words and metrics
  /tasks/<task>/<version>/manifest.json   the version's manifest as JSON

The page builders are pure functions of registry records, so tests can check them without a
server. Everything read from the registry is HTML-escaped: a task template may hold markup, and
the page shows it as text. No external assets are loaded (a little inline CSS), so the page works
offline.
"""

from __future__ import annotations

import argparse
import html
import json
from typing import NamedTuple
from urllib.parse import quote

DEFAULT_PORT = 8600
PRODUCTION = "production"
CSS = (
    "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:75em}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:3px 9px;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap}"
    "code{background:#f6f6f6}nav{margin-bottom:1em}.muted{color:#888}"
)


class TaskView(NamedTuple):
    """What the pages show of one task: its versions (oldest first) and its aliases by name."""

    task: str
    versions: list  # [Manifest, ...]
    aliases: dict  # {name: AliasState}


def read_task(registry, task: str) -> TaskView:
    """The task's versions and aliases, read through the registry's public API."""
    return TaskView(task, registry.list_versions(task), registry.aliases(task))


def read_registry(registry) -> list[TaskView]:
    """Every task of the registry, by name."""
    return [read_task(registry, task) for task in registry.list_tasks()]


# ------------------------------------------------------------------------------------ helpers
def _e(value) -> str:
    """`value` as escaped HTML text; None shows as a dash."""
    return "&mdash;" if value is None else html.escape(str(value))


def task_url(task: str) -> str:
    return f"/tasks/{quote(task, safe='')}"


def version_url(task: str, version: int) -> str:
    return f"{task_url(task)}/{int(version)}"


def manifest_url(task: str, version: int) -> str:
    return f"{version_url(task, version)}/manifest.json"


def _link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href)}">{_e(text)}</a>'


def _score(manifest, *path: str) -> str:
    """A score nested in the manifest's metrics (e.g. "dev", "score"), to 4 decimals."""
    value = manifest.metrics
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4f}"
    return _e(value)


def flatten(value, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts as (dotted key, leaf value) pairs in key order, e.g. ("dev.score", 0.75)."""
    if not isinstance(value, dict):
        return [(prefix, value)]
    if not value:
        return [(prefix, "{}")] if prefix else []
    pairs = []
    for key in sorted(value):
        pairs += flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    return pairs


def _table(head: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """An HTML table of already escaped cells; columns in `numeric` are right-aligned."""
    header = "".join(f"<th>{h}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _pairs_table(pairs: list[tuple[str, object]]) -> str:
    if not pairs:
        return '<p class="muted">none recorded</p>'
    return _table(["field", "value"], [[_e(k), _e(v)] for k, v in pairs])


def page(title: str, body: str, crumbs: list[tuple[str, str]] = ()) -> str:
    """A complete HTML page: `title` (plain text, escaped here), a breadcrumb line of
    (href, text) links and `body` (already HTML)."""
    nav = " / ".join([_link("/", "registry"), *(_link(href, text) for href, text in crumbs)])
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<nav>{nav}</nav>",
        f"<h1>{_e(title)}</h1>",
        body,
        "</body>",
        "</html>",
        "",
    ])


def _short(value: str | None, keep: int = 12) -> str:
    """A long identifier (a git commit) cut to `keep` characters; the whole one in a tooltip."""
    if value is None or len(value) <= keep:
        return _e(value)
    return f'<code title="{_e(value)}">{_e(value[:keep])}&hellip;</code>'


def _aliases_at(view: TaskView, version: int) -> str:
    names = sorted(name for name, state in view.aliases.items() if state.version == version)
    return ", ".join(_e(n) for n in names)


# -------------------------------------------------------------------------------------- pages
def index_page(views: list[TaskView], uri: str) -> str:
    """The registry's front page: one row per task with its production version, that version's
    dev and test scores, the number of versions and where each alias points."""
    rows = []
    for view in views:
        production = view.aliases.get(PRODUCTION)
        by_version = {m.version: m for m in view.versions}
        current = by_version.get(production.version) if production else None
        aliases = ", ".join(f"{_e(name)} &rarr; v{state.version}"
                            for name, state in sorted(view.aliases.items()))
        rows.append([
            _link(task_url(view.task), view.task),
            _link(version_url(view.task, current.version), f"v{current.version}")
            if current else '<span class="muted">none</span>',
            _score(current, "dev", "score") if current else "",
            _score(current, "test", "score") if current else "",
            _e(current.metric) if current else "",
            str(len(view.versions)),
            aliases,
        ])
    body = [f"<p>Registry <code>{_e(uri)}</code>: {len(views)} task(s). Read-only.</p>"]
    if rows:
        body.append(_table(["task", PRODUCTION, "dev score", "test score", "metric", "versions",
                            "aliases"], rows, numeric=(2, 3, 5)))
    else:
        body.append('<p class="muted">No prompts registered yet.</p>')
    return page("Prompt registry", "\n".join(body))


def _alias_section(task: str, name: str, state) -> str:
    """One alias: where it points and every move it made (oldest first)."""
    rows = [[str(h.get("seq", "")), _link(version_url(task, h["version"]), f"v{h['version']}")
             if isinstance(h.get("version"), int) else _e(h.get("version")),
             _e(None if h.get("previous") is None else f"v{h['previous']}"),
             _e(h.get("moved_at"))] for h in state.history]
    return (f"<h3>{_e(name)} &rarr; {_link(version_url(task, state.version), f'v{state.version}')}"
            f"</h3>\n<p>{state.seq} move(s), last at {_e(state.moved_at)}.</p>\n"
            + _table(["move", "version", "previous", "moved at"], rows, numeric=(0,)))


def task_page(view: TaskView) -> str:
    """Every version of a task (newest first) with its creation time, scores, init, prompt
    length, data and code versions, then each alias with its full move history."""
    rows = [[
        _link(version_url(view.task, m.version), f"v{m.version}"),
        _e(m.created_at),
        _aliases_at(view, m.version),
        _score(m, "dev", "score"),
        _score(m, "test", "score"),
        _score(m, "ensemble", "test", "score"),
        _e(m.init),
        str(m.prompt_length),
        _e(m.dataset_version),
        _short(m.code_version),
    ] for m in reversed(view.versions)]
    metric = view.versions[-1].metric if view.versions else None
    body = [
        f"<p>{len(view.versions)} version(s); metric: {_e(metric)}.</p>",
        "<h2>Versions</h2>",
        _table(["version", "created at", "aliases", "dev score", "test score", "ensemble test",
                "init", "prompt length", "dataset version", "code version"], rows,
               numeric=(3, 4, 5, 7)),
        "<h2>Aliases</h2>",
    ]
    body += [_alias_section(view.task, name, state)
             for name, state in sorted(view.aliases.items())]
    if not view.aliases:
        body.append('<p class="muted">No aliases.</p>')
    return page(f"Task {view.task}", "\n".join(body), [(task_url(view.task), view.task)])


def version_page(manifest, view: TaskView) -> str:
    """One version: lineage, hyperparameters, the task's template and label words, and metrics,
    with a link to its manifest.json."""
    m = manifest
    lineage = [
        ("created_at", m.created_at), ("base_model", m.base_model),
        ("base_model_fingerprint", m.base_model_fingerprint), ("init", m.init),
        ("objective", m.objective), ("prompt_length", m.prompt_length),
        ("shape [P, E]", m.shape), ("dtype", m.dtype), ("dataset_version", m.dataset_version),
        *flatten(m.data_source, "data_source"), ("code_version", m.code_version),
        ("spec_sha256", m.spec_sha256), ("blob_sha256", m.blob_sha256),
        ("publish_id", m.publish_id),
    ]
    words = "".join(f"<li><code>{_e(w)}</code></li>" for w in m.label_words)
    aliases = _aliases_at(view, m.version) or '<span class="muted">none</span>'
    body = "\n".join([
        f"<p>Aliases here: {aliases}. Raw record: "
        f"{_link(manifest_url(m.task, m.version), 'manifest.json')}</p>",
        "<h2>Lineage</h2>", _pairs_table(lineage),
        "<h2>Hyperparameters</h2>", _pairs_table(flatten(m.hyperparameters)),
        "<h2>Task</h2>", f"<p>Metric: {_e(m.metric)}</p>",
        f"<p>Template:</p>\n<pre>{_e(m.template)}</pre>",
        f"<p>Label words (in label order):</p>\n<ol>{words}</ol>",
        "<h2>Metrics</h2>", _pairs_table(flatten(m.metrics)),
    ])
    crumbs = [(task_url(m.task), m.task), (version_url(m.task, m.version), f"v{m.version}")]
    return page(f"{m.task} v{m.version}", body, crumbs)


def error_page(status: int, message: str) -> str:
    return page(f"{status}", f"<p>{_e(message)}</p>")


# ---------------------------------------------------------------------------------------- app
def create_app(registry):
    """A Starlette app serving the pages over `registry` (a softprompt.registry.Registry).

    Every request reads the registry afresh, so the page follows promotions without a restart.
    An unknown task or version is a 404 page; a registry that cannot be read is a 502 page."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    from softprompt.registry import InvalidNameError, NotFoundError, RegistryError

    def guarded(render):
        def endpoint(request):
            try:
                return render(**request.path_params)
            except (NotFoundError, InvalidNameError) as err:
                return HTMLResponse(error_page(404, str(err)), status_code=404)
            except RegistryError as err:
                return HTMLResponse(error_page(502, str(err)), status_code=502)

        return endpoint

    def index():
        return HTMLResponse(index_page(read_registry(registry), registry.uri))

    def task(task: str):
        view = read_task(registry, task)
        if not view.versions:
            raise NotFoundError(f"{registry.uri}: no task {task!r}")
        return HTMLResponse(task_page(view))

    def version(task: str, version: int):
        manifest = registry.manifest(task, version)
        return HTMLResponse(version_page(manifest, read_task(registry, task)))

    def manifest_json(task: str, version: int):
        record = registry.manifest(task, version).to_dict()
        return Response(json.dumps(record, indent=2, sort_keys=True) + "\n",
                        media_type="application/json")

    return Starlette(routes=[
        Route("/", guarded(index)),
        Route("/tasks/{task}", guarded(task)),
        Route("/tasks/{task}/{version:int}", guarded(version)),
        Route("/tasks/{task}/{version:int}/manifest.json", guarded(manifest_json)),
    ])


# ---------------------------------------------------------------------------------------- CLI
EPILOG = """\
example:
  softprompt ui --registry registry --port 8600
  # then open http://127.0.0.1:8600/ : tasks, their versions and aliases, each version's
  # lineage and metrics, and /tasks/<task>/<version>/manifest.json

  softprompt ui --registry s3://prompts/registry --host 0.0.0.0
  # S3 credentials and endpoint come from the standard AWS chain (AWS_PROFILE, ...)
"""


def _cmd_ui(args: argparse.Namespace) -> int:
    import uvicorn

    from softprompt.registry import open_registry

    registry = open_registry(args.registry)
    print(f"serving {registry.uri} read-only at http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(create_app(registry), host=args.host, port=args.port, log_level="warning")
    return 0


def add_commands(sub) -> None:
    from softprompt.registry import default_registry_uri

    class Formatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
        pass

    s = sub.add_parser(
        "ui", help="browse a prompt registry in a web browser (read-only)",
        formatter_class=Formatter, epilog=EPILOG,
        description="A read-only web page over a prompt registry: every task with its\n"
                    "production version and scores, every version's lineage and metrics, and\n"
                    "each alias's move history. Stop it with Ctrl-C.",
    )
    s.add_argument("--registry", default=default_registry_uri(),
                   help="registry URI: a directory, file:///path or s3://bucket/prefix")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    s.set_defaults(func=_cmd_ui)
