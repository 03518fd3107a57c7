"""Conventions of the Snakemake ecosystem: the conda envs, the config docs and the catalog file
agree with their sources of truth (pyproject.toml, the schema, config/config.yaml)."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What the rules import at run time: the dependencies, the [export] extra (rule export_h5) and the
# [demo] extra (rule demo_model).
RUNTIME_EXTRAS = ("export", "demo")
PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;#]+)$")


def pins(requirements: list[str], where: str) -> dict[str, str]:
    out = {}
    for req in requirements:
        match = PIN.match(req.strip())
        assert match, f"{where}: {req!r} is not an exact pin (name==version)"
        out[match[1].lower().replace("_", "-")] = match[2]
    return out


def runtime_pins() -> dict[str, str]:
    project = PYPROJECT["project"]
    wanted = pins(project["dependencies"], "pyproject dependencies")
    for extra in RUNTIME_EXTRAS:
        wanted |= pins(project["optional-dependencies"][extra], f"pyproject [{extra}]")
    return wanted


ENVS = sorted((ROOT / "envs").glob("*.yaml"))


def test_every_job_rule_has_log_benchmark_and_the_env():
    assert ENVS == [ROOT / "envs" / "timekd-embed.yaml"]
    rules = "".join(p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk")))
    assert 'ENV = "../../envs/timekd-embed.yaml"' in rules
    blocks = re.split(r"^(?=rule \w+:)", rules, flags=re.M)[1:]
    jobs = [b for b in blocks if re.search(r"^    (script|shell|run):", b, re.M)]
    assert len(jobs) >= 6
    for block in jobs:
        for directive in ("    log:\n", "    benchmark:\n", "    conda:\n        ENV\n"):
            assert directive in block, f"{block.splitlines()[0]} lacks {directive.split(':')[0].strip()}:"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_equal_the_pyproject_pins(env):
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pins(pip, env.name) == runtime_pins()
    python = next(d for d in spec["dependencies"] if isinstance(d, str) and d.startswith("python="))
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))


def test_the_test_extra_is_not_a_runtime_pin():
    assert not set(pins(PYPROJECT["project"]["optional-dependencies"]["test"], "[test]")) & set(runtime_pins())


# --------------------------------------------------------------------------- config docs


def leaf_keys(schema: dict, prefix: str = "") -> dict[str, dict]:
    out = {}
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            out |= leaf_keys(sub, f"{prefix}{key}.")
        else:
            out[prefix + key] = sub
    return out


def lookup(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def as_doc(value) -> str:
    """A value as config/README.md writes it: YAML flow style."""
    if isinstance(value, list):
        return "[" + ", ".join(as_doc(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return yaml.safe_dump(value).split("\n")[0]
    return str(value)


def test_config_readme_documents_every_key_with_the_default_of_config_yaml():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    rows = dict(re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", (ROOT / "config" / "README.md").read_text(), re.M))
    keys = leaf_keys(schema)
    assert set(rows) == set(keys)
    for key, sub in keys.items():
        value = lookup(default, key)
        assert rows[key] == as_doc(value), key
        if "default" in sub:
            assert sub["default"] == value, f"schema default of {key} differs from config/config.yaml"


# --------------------------------------------------------------------------- workflow catalog


def test_catalog_file_describes_how_to_run_the_workflow():
    usage = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    flags = usage["mandatory-flags"]
    assert flags["desc"] and flags["flags"]
    readme = (ROOT / "README.md").read_text()
    for flag in re.findall(r"--\S+(?: \S+=\S+)?", flags["flags"]):
        assert flag in readme, f"{flag} is a mandatory flag but the README never shows it"
    stack = usage["software-stack-deployment"]
    assert stack["conda"] is True and ENVS  # --sdm conda works through envs/*.yaml
    # The catalog's generator (scripts/generate-catalog.py) reads usage.report; under
    # software-stack-deployment it is never seen.
    assert usage["report"] is True and "report" not in stack and "snakemake --report report.html" in readme
    assert "report:" in (ROOT / "Snakefile").read_text()
