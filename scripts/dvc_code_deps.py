"""dvc.yaml's code dependencies: the softprompt modules each stage's commands may import.

    .venv/bin/python scripts/dvc_code_deps.py           # rewrite the `- softprompt/...` lists
    .venv/bin/python scripts/dvc_code_deps.py --check   # print the differences; exit 1 if any

The lists come from a static model of Python's imports (ast; only the command line itself is
imported, to map each command to its function). `softprompt <command>` loads cli.py, what it
imports when loaded, the subcommand modules (cli._EXTENSIONS) and what their setup functions call,
then whatever the command's function may import. tests/test_dvc.py checks dvc.yaml with it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import sys
import tomllib
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DVC_YAML = REPO_ROOT / "dvc.yaml"
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
COMMAND = re.compile(r"(?:^|&&|;|\|\|)\s*softprompt\s+([a-z][\w-]*)")


def module_file(name: str) -> Path | None:
    """softprompt.a.b -> softprompt/a/b.py or softprompt/a/b/__init__.py; None if not ours."""
    base = REPO_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _parse(module: str) -> ast.Module:
    return ast.parse(module_file(module).read_text())


def _import_targets(node: ast.AST, module: str) -> set[str]:
    """The softprompt modules one import statement loads (`from a import b` may name module a.b)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolved against the importing module's package
            is_package = module_file(module).name == "__init__.py"
            package = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}".rstrip(".")
        names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
    else:
        return set()
    return {n for n in names if n.split(".")[0] == "softprompt" and module_file(n)}


def _imports(nodes, module: str, *, into_functions: bool) -> set[str]:
    """Imports under `nodes`; without into_functions, only those that run when the module loads."""
    found, stack = set(), list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, FUNCTIONS) and not into_functions:
            continue
        found |= _import_targets(node, module)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _function_imports(module: str, roots: list[str], *, references: bool) -> set[str]:
    """Imports inside the module-level functions `roots` and the module's functions they call.
    With references, a function merely named (a callback) counts as called too; without, only
    direct calls do, so that `set_defaults(func=_cmd_x)` does not pull in every command."""
    defs = {n.name: n for n in _parse(module).body if isinstance(n, FUNCTIONS[:2])}
    todo, seen = [r for r in roots if r in defs], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        nodes = list(ast.walk(defs[name]))
        if references:
            names = [n.id for n in nodes if isinstance(n, ast.Name)]
        else:
            calls = [n.func for n in nodes if isinstance(n, ast.Call)]
            names = [f.id for f in calls if isinstance(f, ast.Name)]
        todo += [n for n in names if n in defs]
    return set().union(*(_imports([defs[n]], module, into_functions=True) for n in seen))


def _closure(at_import: set[str], called: set[str]) -> set[str]:
    """Every module loaded: `at_import` with what they import when loaded, and `called` (code the
    command runs) with everything their functions may import; parent packages load too."""
    done: dict[str, bool] = {}
    todo = [(m, False) for m in at_import] + [(m, True) for m in called]
    while todo:
        name, deep = todo.pop()
        if done.get(name) is True or (name in done and not deep):
            continue
        done[name] = deep
        parts = name.split(".")
        todo += [(m, deep) for m in _imports(_parse(name).body, name, into_functions=deep)]
        todo += [(".".join(parts[:i]), False) for i in range(1, len(parts))]
    return set(done)


def entry_point() -> tuple[str, str]:
    """The `softprompt` console script's module and function (pyproject.toml)."""
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["softprompt"].split(":")
    return module, func


def loaded_by_every_command() -> set[str]:
    """What `softprompt <anything>` imports before dispatching: the entry module, the extension
    modules build_parser imports by name (cli._EXTENSIONS), and what their setup functions call."""
    module, func = entry_point()
    extensions = set(importlib.import_module(module)._EXTENSIONS)
    found = {module, *extensions}
    found |= _function_imports(module, [func, "build_parser"], references=False)
    for ext in extensions:
        found |= _function_imports(ext, ["add_commands"], references=False)
    return _closure(found, set())


def command_files(command: str) -> set[str]:
    """Repo-relative files of every softprompt module `softprompt <command>` may import."""
    cli = importlib.import_module(entry_point()[0])
    (sub,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    func = sub.choices[command].get_default("func")
    called = _function_imports(func.__module__, [func.__name__], references=True)
    modules = _closure(loaded_by_every_command(), called)
    return {module_file(m).relative_to(REPO_ROOT).as_posix() for m in modules}


def stages(path: Path = DVC_YAML) -> dict[str, dict]:
    """dvc.yaml's stages with foreach/matrix bodies unwrapped: {name: {"cmd", "deps"}}."""
    found = yaml.safe_load(path.read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in found.items()}


def stage_commands(stage: dict) -> list[str]:
    """The softprompt subcommands a stage's cmd runs."""
    return COMMAND.findall(stage["cmd"])


def needed_files(path: Path = DVC_YAML) -> dict[str, list[str]]:
    """{stage: the softprompt files its commands may import, sorted}."""
    return {
        name: sorted(set().union(*(command_files(c) for c in stage_commands(stage))))
        for name, stage in stages(path).items()
    }


def rewrite(path: Path = DVC_YAML) -> str:
    """dvc.yaml's text with each stage's `- softprompt/...` list replaced by the needed files."""
    needed = needed_files(path)
    lines, out, current, i = path.read_text().split("\n"), [], None, 0
    while i < len(lines):
        stage = re.match(r"^  ([a-z_]+):\s*$", lines[i])
        current = stage.group(1) if stage else current
        dep = re.match(r"^(\s*)- softprompt/", lines[i])
        if not dep:
            out.append(lines[i])
            i += 1
            continue
        while i < len(lines) and re.match(r"^\s*- softprompt/", lines[i]):
            i += 1
        out += [f"{dep.group(1)}- {f}" for f in needed[current]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args(argv)
    text = rewrite()
    if text == DVC_YAML.read_text():
        return 0
    if args.check:
        listed = {
            n: [d for d in s["deps"] if d.startswith("softprompt/")] for n, s in stages().items()
        }
        for name, files in needed_files().items():
            if files != listed[name]:
                print(f"{name}: listed {listed[name]}, needed {files}")
        return 1
    DVC_YAML.write_text(text)
    print(f"rewrote the code dependencies in {DVC_YAML}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
