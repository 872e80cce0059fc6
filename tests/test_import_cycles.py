"""No import cycles inside vlm_app, counting imports inside functions too (a lazy import is still a dependency)."""

import ast
import inspect
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlm_app"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                anchor = package.rsplit(".", node.level - 1)[0] if node.level else ""  # `from .x` / `from ..x`
                base = ".".join(filter(None, [anchor, node.module or ""]))
                targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        # a package's __init__ re-exporting its modules is not a dependency of those modules on each other
        graph[name] = {target for target in targets if target in modules and target != name
                       and not name.startswith(target + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done, path = set(), []

    def visit(node):
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := visit(node):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_sees_a_lazy_cycle():
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def argparse_readers() -> list[str]:
    """Functions outside cli.py that take the parsed flags (a parameter named `args` whose attributes they read),
    or modules outside cli.py that import argparse."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                if "argparse" in names:
                    found.append(f"{_module_name(path)} imports argparse")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _reads_flags(node):
                found.append(f"{_module_name(path)}.{node.name}")
    return found


def _reads_flags(function: ast.FunctionDef) -> bool:
    if "args" not in [argument.arg for argument in function.args.args + function.args.kwonlyargs]:
        return False
    return any(isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "args"
               for node in ast.walk(function))


def test_only_the_cli_reads_the_parsed_flags():
    """The CLI turns flags into typed values (a `service.Request`, `MemoryLimit`, `ChapterOptions`, a
    `ServerConfig`, ...); every other layer takes those."""
    assert argparse_readers() == []


def test_the_flag_reader_finder_sees_one():
    def run(args):
        return args.model

    def star(*args):
        return args

    assert _reads_flags(ast.parse(textwrap.dedent(inspect.getsource(run))).body[0])
    assert not _reads_flags(ast.parse(textwrap.dedent(inspect.getsource(star))).body[0])
