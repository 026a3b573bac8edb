"""The layout shows the pipeline: helpers below it, and no stage importing a later one."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "alignscope"
# shared plumbing, each importing only helpers listed before it
HELPERS = ["io", "config", "cache", "models", "answers", "trl_patches", "shared_prompt", "provenance", "kv_cache",
           "memory", "stages", "markdown"]
# the pipeline, in order, by package (a top-level module is its own): each may import helpers, earlier
# entries and its own package's modules. metrics defines the measures and their statistics (no model),
# which the judges' and the refusal measures' cards validate against, so it precedes both.
PIPELINE = ["data", "suites", "evalset", "heldout", "train", "generate", "metrics_schema", "metrics", "judges", "refusal",
            "report", "scale", "study_config", "study", "cli", "__main__"]


def unit(module: str) -> str:
    """The layout entry a module belongs to: its package, or itself."""
    return module.split(".")[0]


def source(module: str) -> Path:
    path = PACKAGE.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def all_modules() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found - {""}


def imported(module: str) -> set[str]:
    """Every alignscope module `module` imports, at the top or inside a function."""
    tree = ast.parse(source(module).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alignscope"):
            found.add(node.module.removeprefix("alignscope").lstrip(".") or "__init__")
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("alignscope.") for a in node.names if a.name.startswith("alignscope.")}
    return found - {"__init__"}


def test_every_module_has_a_place_in_the_layout():
    assert {unit(m) for m in all_modules()} == set(HELPERS) | set(PIPELINE)
    assert all(unit(m) == m for m in all_modules() if unit(m) in HELPERS)  # helpers are single modules


def test_helpers_import_only_earlier_helpers():
    for i, module in enumerate(HELPERS):
        assert imported(module) <= set(HELPERS[:i]), module


def later_imports(module: str, imports: set[str]) -> set[str]:
    allowed = set(HELPERS) | set(PIPELINE[:PIPELINE.index(unit(module)) + 1])
    return {i for i in imports if unit(i) not in allowed}


def test_no_stage_imports_a_later_one():
    for module in all_modules() - set(HELPERS):
        assert not later_imports(module, imported(module)), f"{module} imports {later_imports(module, imported(module))}"


def test_a_later_import_is_seen():
    """metrics importing the refusal package (as it once did) is a later import; a package's own modules are not."""
    assert later_imports("metrics", {"answers", "refusal", "refusal.patterns"}) == {"refusal", "refusal.patterns"}
    assert later_imports("judges.card", {"judges.score", "metrics", "report.render"}) == {"report.render"}


def test_alignscope_imports_sit_at_the_top_of_each_module():
    """Imports of alignscope's own modules inside functions hide the graph; torch and
    transformers are imported lazily instead (so the CLI starts fast), never ours."""
    lazy = []
    for path in PACKAGE.rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lazy += [f"{path.stem}.{fn.name}" for node in ast.walk(fn)
                         if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alignscope")]
    # generate decodes with kv_cache, which imports torch at its top
    assert lazy == ["generate.decode"], lazy


def test_the_cli_starts_without_torch():
    import subprocess
    import sys

    code = "import sys, alignscope.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
