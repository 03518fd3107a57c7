"""The code's own documentation: every module opens by saying what it owns, public functions
document what their signature does not (the errors users see above all), no tracker numbers,
no lambda is assigned to a name, and every import of the project's own names finds them."""

import ast
import importlib
import importlib.util
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


def _raises_input_error(function: ast.FunctionDef) -> bool:
    """Whether the function's own body (not a nested function's) raises InputError."""
    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            yield child
            yield from walk(child)
    return any(isinstance(node, ast.Raise) and node.exc is not None and "InputError" in ast.unparse(node.exc)
               for node in walk(function))


def test_public_functions_have_a_docstring_that_names_the_errors_users_see():
    """Docstrings say what the signature does not: every public function has one, and one that raises
    the user-facing InputError says when (Raises:); Args/Returns only where the contract needs them."""
    missing = []
    for path in PACKAGE:
        for function in public_functions(ast.parse(path.read_text())):
            doc = ast.get_docstring(function) or ""
            if not doc or (_raises_input_error(function) and "Raises:" not in doc):
                missing.append(f"{path.name}:{function.lineno} {function.name}")
    assert missing == []


def test_no_lambda_is_assigned_to_a_name():
    found = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in EVERY_MODULE
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Lambda)]
    assert found == []


def own_imports(path: Path):
    """(line, module, name) of every `from <this project's module> import name`, also inside functions."""
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 1 and path.parent.name == "timekd_embed":           # from .store import ...
            module = "timekd_embed" + (f".{node.module}" if node.module else "")
        elif node.module and node.module.split(".")[0] in ("timekd_embed", "benchmarks"):
            module = node.module
        else:
            continue
        yield from ((node.lineno, module, alias.name) for alias in node.names)


def test_every_import_of_the_projects_own_names_finds_them():
    """A function-level import runs only when the function does: benchmarks/startup.py imported
    load_csv from windows.py after it had moved to table.py, and failed only when someone ran it."""
    missing = []
    for path in EVERY_MODULE:
        for line, module, name in own_imports(path):
            found = importlib.import_module(module)
            if not hasattr(found, name) and not (hasattr(found, "__path__")       # a package's submodule
                                                 and importlib.util.find_spec(f"{module}.{name}")):
                missing.append(f"{path.relative_to(ROOT)}:{line} {module}.{name}")
    assert missing == []
