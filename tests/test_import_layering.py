"""Training and export never import each other (issue 10: "export leaves training").

Checked statically: every ``.py`` under ``uniter_tf/training`` and ``uniter_tf/export`` is parsed with
``ast`` and every import is collected, function-level ones included (the cycle this guards against
was hidden in them). What both sides need lives in ``uniter_tf/runs.py``.
"""

import ast
import pathlib

import pytest

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent / "uniter_tf"
# layer -> the package it must not import.
FORBIDDEN = {"training": "uniter_tf.export", "export": "uniter_tf.training"}


def imported_modules(source: str, module_name: str):
    """Every module an (already parsed) source imports, absolute names, with line numbers.

    ``from uniter_tf import export`` counts as importing ``uniter_tf.export``; relative imports are
    resolved against ``module_name``.
    """
    package_parts = module_name.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package_parts[:len(package_parts) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def violations(package_root: pathlib.Path = PACKAGE_ROOT):
    """``[(file, line, imported module)]`` for every training -> export or export -> training import."""
    found = []
    for layer, forbidden in FORBIDDEN.items():
        files = sorted((package_root / layer).rglob("*.py"))
        assert files, f"no Python files under {package_root / layer}"
        for path in files:
            relative = path.relative_to(package_root.parent).with_suffix("")
            module_name = ".".join(relative.parts)
            for imported, line in imported_modules(path.read_text(encoding="utf-8"), module_name):
                if imported == forbidden or imported.startswith(forbidden + "."):
                    found.append((str(path.relative_to(package_root.parent)), line, imported))
    return found


def test_training_and_export_do_not_import_each_other():
    found = violations()
    assert not found, "forbidden imports (move what both need to uniter_tf/runs.py):\n" + "\n".join(
            f"  {path}:{line} imports {module}" for path, line, module in found)


@pytest.mark.parametrize("source, module, expected", [
        ("def f():\n    from uniter_tf.export import exporter\n", "uniter_tf.training.x", True),
        ("import uniter_tf.export.model_dir as m\n", "uniter_tf.training.x", True),
        ("from uniter_tf import export\n", "uniter_tf.training.x", True),
        ("from ..export import signatures\n", "uniter_tf.training.x", True),
        ("from uniter_tf import exporting, runs\n", "uniter_tf.training.x", False),
        ("from uniter_tf.runs import task_checkpoint\n", "uniter_tf.training.x", False),
])
def test_the_checker_sees_function_level_and_relative_imports(source, module, expected):
    # The checker itself must catch what the cycle used (imports inside functions), or the test above
    # could not fail.
    names = [name for name, _ in imported_modules(source, module)]
    assert any(name == "uniter_tf.export" or name.startswith("uniter_tf.export.") for name in names) is expected


def test_the_checker_finds_a_planted_import(tmp_path):
    root = tmp_path / "uniter_tf"
    for layer in FORBIDDEN:
        (root / layer).mkdir(parents=True)
        (root / layer / "__init__.py").write_text("")
    (root / "export" / "planted.py").write_text("def load():\n    from uniter_tf.training import finetune\n")
    assert violations(root) == [("uniter_tf/export/planted.py", 2, "uniter_tf.training"),
                                ("uniter_tf/export/planted.py", 2, "uniter_tf.training.finetune")]


def test_export_names_no_task():
    # Each task declares its export outputs (DownstreamTask.export_outputs); the exporter must not
    # special-case one by name. tiny.py is exempt: it is a toy VQA model for the serving tests.
    # The registered names, read from the @register_task("...") decorators (no TensorFlow import), and
    # UNITER's other task families.
    task_names = {"ve", "snli_ve", "nlvr2", "vcr", "refcoco", "itm"}
    for path in (PACKAGE_ROOT / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_task" and node.args:
                task_names.add(node.args[0].value)
    assert "vqa" in task_names
    found = []
    for path in sorted((PACKAGE_ROOT / "export").rglob("*.py")):
        if path.name == "tiny.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in task_names:
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert not found, f"task names in uniter_tf/export: {found}"


def test_production_packages_do_not_import_the_test_helpers():
    """Synthetic record writers and reference models live in uniter_tf/testing (issue 10); nothing the library,
    the pipeline or the components run imports them (benchmarks and tests may)."""
    repository = PACKAGE_ROOT.parent
    found = []
    for path in sorted([*PACKAGE_ROOT.rglob("*.py"), *(repository / "pipeline").rglob("*.py"),
                        *(repository / "components").rglob("*.py")]):
        relative = path.relative_to(repository).with_suffix("")
        if relative.parts[:2] == ("uniter_tf", "testing"):
            continue
        for imported, line in imported_modules(path.read_text(encoding="utf-8"), ".".join(relative.parts)):
            if imported == "uniter_tf.testing" or imported.startswith("uniter_tf.testing."):
                found.append(f"  {path.relative_to(repository)}:{line} imports {imported}")
    assert not found, "production code imports uniter_tf.testing:\n" + "\n".join(found)
    for moved in ("synthetic_data", "synthetic_vqa", "sample_records"):
        assert not (PACKAGE_ROOT / "training" / f"{moved}.py").exists(), moved
