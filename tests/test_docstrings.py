"""The code's own documentation (issue #16): every module opens by saying what it owns, public
functions that take arguments document Args (and Returns when they return a value), and no
lambda is assigned to a name."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = sorted((ROOT / "workflow" / "timekd_embed").glob("*.py"))
SCRIPTS = sorted((ROOT / "workflow" / "scripts").glob("*.py"))
EVERY_MODULE = PACKAGE + SCRIPTS + sorted((ROOT / "benchmarks").glob("*.py"))


def public_functions(tree: ast.Module):
    """Module-level public functions and the public methods of public classes."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from (item for item in node.body
                        if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"))


def test_every_module_says_what_it_owns():
    missing = [str(path.relative_to(ROOT)) for path in EVERY_MODULE
               if not ast.get_docstring(ast.parse(path.read_text()))]
    assert missing == []


def test_public_functions_document_args_and_returns():
    missing = []
    for path in PACKAGE:
        for function in public_functions(ast.parse(path.read_text())):
            doc = ast.get_docstring(function) or ""
            args = [a.arg for a in function.args.args + function.args.kwonlyargs if a.arg not in ("self", "cls")]
            returns = any(isinstance(node, ast.Return) and node.value is not None for node in ast.walk(function))
            if not doc or (args and "Args:" not in doc) or (args and returns and "Returns:" not in doc
                                                              and "Yields:" not in doc):
                missing.append(f"{path.name}:{function.lineno} {function.name}")
    assert missing == []


def test_no_lambda_is_assigned_to_a_name():
    found = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in EVERY_MODULE
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Lambda)]
    assert found == []
