"""The code's own documentation: every module opens by saying what it owns and holds one concern
(450 lines at most), public functions document what their signature does not (the errors users
see above all) and short ones briefly, no tracker numbers, no lambda is assigned to a name, and
every import of the project's own names finds them."""

import ast
import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = sorted((ROOT / "workflow" / "timekd_embed").glob("*.py"))
SCRIPTS = sorted((ROOT / "workflow" / "scripts").glob("*.py"))
EVERY_MODULE = PACKAGE + SCRIPTS + sorted((ROOT / "benchmarks").glob("*.py"))
EVERY_PYTHON_FILE = EVERY_MODULE + sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "tools").glob("*.py"))
# Where the project's code and prose live; data (the demo's CSV) is left out.
CODE_AND_DOCS = ["workflow", "tests", "benchmarks", "tools", "docs", "config", "profiles", "envs", ".test", ".ci",
                 "README.md", "Makefile", "Snakefile", "pyproject.toml", ".snakemake-workflow-catalog.yml"]
TEXT_SUFFIXES = {".py", ".smk", ".md", ".rst", ".yaml", ".yml", ".toml", ".json", ".txt", ".html", ".sh", ""}


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


def test_no_package_module_is_over_450_lines():
    """A module that grows past this holds more than one concern: split it by concern."""
    long = {str(path.relative_to(ROOT)): lines for path in sorted((ROOT / "workflow" / "timekd_embed").rglob("*.py"))
            if (lines := len(path.read_text().splitlines())) > 450}
    assert long == {}


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


def _code_lines(function: ast.FunctionDef, lines: list[str]) -> int:
    """Lines of a function below its docstring that hold code (not blank, not only a comment)."""
    body = function.body[1:] if ast.get_docstring(function) else function.body
    if not body:
        return 0
    return sum(1 for line in lines[body[0].lineno - 1:function.end_lineno]
               if line.strip() and not line.strip().startswith("#"))


def test_a_function_of_three_code_lines_has_a_docstring_of_five_lines_at_most():
    """Args/Returns sections over a one-line body repeat its signature: a short function says in a
    line or two what the signature does not."""
    long = []
    for path in EVERY_PYTHON_FILE:
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node):
                doc = node.body[0]
                if _code_lines(node, lines) <= 3 and doc.end_lineno - doc.lineno + 1 > 5:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert long == []


def code_and_docs():
    """Every text file of CODE_AND_DOCS (caches left out)."""
    for name in CODE_AND_DOCS:
        top = ROOT / name
        for path in [top] if top.is_file() else sorted(top.rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts:
                yield path


def bare_issue_numbers(text: str) -> list[str]:
    """Tracker references that name no repository (a number after a number sign or the word issue): a
    reader of the code has no tracker to look them up in. An upstream one names its repository, as
    snakemake/snakemake#281 does."""
    words = [match[0] for match in re.finditer(r"\bissues?\s*#?\s*\d", text, flags=re.IGNORECASE)]
    signs = [match[0] for match in re.finditer(r"([\w./-]*)#\d+", text)
             if not re.fullmatch(r"[\w.-]+/[\w.-]+", match[1])]
    return words + signs


def test_code_and_docs_name_no_bare_issue_number():
    planted = "see " + "issue" + " " + "#" + "14, and " + "#" + "12.3; not pytorch/pytorch" + "#" + "161749"
    assert bare_issue_numbers(planted) == ["issue" + " #" + "1", "#" + "14", "#" + "12"]
    found = {str(path.relative_to(ROOT)): numbers for path in code_and_docs()
             if (numbers := bare_issue_numbers(path.read_text(errors="replace")))}
    assert found == {}


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
