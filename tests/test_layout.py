"""The layout shows the pipeline: helpers below it, and no stage importing a later one."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "alignscope"
# shared plumbing, each importing only helpers listed before it
HELPERS = ["io", "config", "cache", "models", "answers", "trl_patches", "shared_prompt", "provenance", "kv_cache",
           "memory", "stages", "markdown"]
# the pipeline, in order; each may import helpers and earlier stages
# (a subpackage's modules are named with a dot; the subpackage itself by its __init__)
PIPELINE = ["data", "suites.xstest", "suites.prompt_file", "suites", "evalset", "heldout", "train", "generate", "judge",
            "reward_model", "score", "refusal.patterns", "refusal.baseline", "refusal.labelled", "refusal.classifier",
            "refusal", "metrics", "refusal.card", "distill", "agreement", "html_report", "report", "scale", "study_config", "study",
            "cli", "__main__"]


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
    assert all_modules() == set(HELPERS) | set(PIPELINE)


def test_helpers_import_only_earlier_helpers():
    for i, module in enumerate(HELPERS):
        assert imported(module) <= set(HELPERS[:i]), module


def test_no_stage_imports_a_later_one():
    for i, module in enumerate(PIPELINE):
        allowed = set(HELPERS) | set(PIPELINE[:i])
        assert imported(module) <= allowed, f"{module} imports {imported(module) - allowed}"


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
