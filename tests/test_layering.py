"""The package's layering: every project import at the top of its file, no import circles, and
the PPO loop and the supervised loop as siblings (rlhf/steps.py holds what both use).

Read from the source with `ast`, nothing is imported: a circle shows here even where an import
inside a function, or the order Python happens to import the modules in, hides it."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rlhf"


def imported_modules(node: ast.AST) -> list[str]:
    """The rlhf modules an import statement names (`from .x import y`, `from . import x`,
    `from rlhf.x import y`, `import rlhf.x`); [] for any other import or statement."""
    if isinstance(node, ast.ImportFrom):
        if node.level == 0 and not (node.module or "").startswith("rlhf"):
            return []
        module = node.module or ""
        if node.level == 0:
            module = module.removeprefix("rlhf").lstrip(".")
        if module:
            return [module.split(".")[0]]
        return [alias.name for alias in node.names]  # from . import chat, faults
    if isinstance(node, ast.Import):
        return [a.name.split(".")[1] for a in node.names if a.name.startswith("rlhf.")]
    return []


def project_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, at_top_level) for each import of an rlhf module in the file at `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    return [(node.lineno, module, id(node) in top)
            for node in ast.walk(tree) for module in imported_modules(node)]


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: the rlhf modules it imports, anywhere in the file}, for every rlhf/*.py."""
    return {path.stem: {m for _, m, _ in project_imports(path)} for path in sorted(package.glob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as [a, b, ..., a], or [] when the graph is acyclic (depth-first search)."""
    state: dict[str, str] = {}  # module -> "open" while on the stack, "done" after

    def visit(module: str, stack: list[str]) -> list[str]:
        state[module] = "open"
        for child in sorted(graph.get(module, ())):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state and (cycle := visit(child, stack + [child])):
                return cycle
        state[module] = "done"
        return []

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return []


def test_find_cycle_reports_the_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_imported_modules_reads_every_spelling_of_a_project_import():
    def modules(source: str) -> list[str]:
        return imported_modules(ast.parse(source).body[0])

    assert modules("from .data import pad_right") == ["data"]
    assert modules("from . import chat, faults") == ["chat", "faults"]
    assert modules("from rlhf.models import get_base") == ["models"]
    assert modules("from rlhf import ppo") == ["ppo"]
    assert modules("import rlhf.tracking") == ["tracking"]
    assert modules("import torch") == [] and modules("from torch import nn") == []


def test_no_function_local_import_of_a_project_module():
    local = [f"rlhf/{path.name}:{line} imports .{module} inside a function or block"
             for path in sorted(PACKAGE.glob("*.py"))
             for line, module, at_top in project_imports(path) if not at_top]
    local += [f"util.py:{line} imports rlhf.{module} inside a function or block"
              for line, module, at_top in project_imports(ROOT / "util.py") if not at_top]
    assert not local, "\n".join(local)


def test_the_module_import_graph_is_acyclic():
    cycle = find_cycle(import_graph(PACKAGE))
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_the_ppo_loop_and_the_supervised_loop_are_siblings():
    imports = import_graph(PACKAGE)
    assert "train" not in imports["ppo_loop"], "ppo_loop.py imports from train.py"
    assert "ppo_loop" not in imports["train"], "train.py imports from ppo_loop.py"
    assert "steps" in imports["ppo_loop"] and "steps" in imports["train"]
