"""The package's structure: imports between its folders run one way (commands -> methods / evals / generators ->
ground floor), and every registry entry is a module that defines its kind's names."""

import ast
from pathlib import Path

import pytest

from posttrain.evals.engines import ENGINES
from posttrain.evaluate import SUITES
from posttrain.gen import GENERATORS
from posttrain.trainers import METHODS

ROOT = Path(__file__).resolve().parents[1]
# folder -> (its package, its floor): an import may only point to a lower floor, or stay inside its folder
FOLDERS = {"core": ("posttrain.core", 0), "data_gen": ("posttrain.data_gen", 1), "trainers": ("posttrain.trainers", 1),
           "evals": ("posttrain.evals", 1), "recipes": ("posttrain.recipes", 1), "posttrain": ("posttrain", 2)}


def folder_of(module: str) -> str:
    """The folder a ``posttrain...`` module lives in (the longest package that holds it)."""
    return max((f for f, (pkg, _) in FOLDERS.items() if module == pkg or module.startswith(pkg + ".")),
               key=lambda f: len(FOLDERS[f][0]))


def imports(source: str) -> set[str]:
    """Every ``posttrain...`` module a file's ``source`` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("posttrain")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("posttrain"):
            out |= {f"{node.module}.{a.name}" for a in node.names}  # `from posttrain import x`: x may be a module
    return out


def arrows() -> dict[tuple[str, str], list[str]]:
    """(from folder, to folder) -> the files that import across it."""
    out: dict[tuple[str, str], list[str]] = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            for module in imports(path.read_text()):
                to = folder_of(module)
                if to != folder:
                    out.setdefault((folder, to), []).append(f"{path.relative_to(ROOT)} -> {module}")
    return out


def test_imports_between_folders_run_one_way():
    graph = arrows()
    back = {k: v for k, v in graph.items() if FOLDERS[k[1]][1] >= FOLDERS[k[0]][1]}
    assert not back, f"imports that run sideways or back up: {back}"
    assert not [(a, b) for a, b in graph if (b, a) in graph]


def test_the_check_sees_an_import_that_runs_back():
    """The graph reads imports inside functions too: the ground floor importing a command is caught."""
    tree = "def f():\n    from posttrain.train import train\n"
    assert imports(tree) == {"posttrain.train.train"} and folder_of("posttrain.train.train") == "posttrain"
    assert folder_of("posttrain.core.errors") == "core" and folder_of("posttrain.evals.qa") == "evals"


@pytest.mark.parametrize("registry", [GENERATORS, METHODS, SUITES, ENGINES], ids=lambda r: r.kind)
def test_every_registry_entry_is_a_module_with_its_kinds_names(registry):
    assert len(registry) >= 2
    for name in registry:
        module = registry.load(name)
        missing = [k for k in registry.contract if not hasattr(module, k)]
        assert not missing, f"{registry.kind} {name} ({module.__name__}) lacks {missing}"


def test_an_unknown_name_is_one_line_naming_the_known_ones():
    from posttrain.core.errors import UsageError

    with pytest.raises(UsageError, match="unknown suite 'qaa'; known suites: flips, forgetting, hallucination"):
        SUITES.load("qaa")
