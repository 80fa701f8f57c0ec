"""The package's import graph has no cycle (module- and function-level imports, TYPE_CHECKING ones too)."""

import ast
from pathlib import Path

import raftlm

PACKAGE = Path(raftlm.__file__).parent


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x / from .x import y
                    base = f"raftlm.{base}" if base else "raftlm"
                if base == "raftlm":
                    deps |= {a.name for a in node.names if a.name in modules}
                elif base.startswith("raftlm."):
                    deps.add(base.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("raftlm.")}
        graph[path.stem] = deps - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep] if dep in stack else [node, dep]
            if dep not in state and (cycle := visit(dep, [*stack, dep])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_cli_help_does_not_import_torch():
    """`raftlm --help` and a bad flag answer in a fraction of a second: torch and transformers load
    only when a command runs (they took ~6 s of the 8 s `raftlm --help` used to take here; scikit-learn 1.4 s more)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from raftlm.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['train', '--lr', 'x']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'raftlm.api', 'raftlm.run') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
