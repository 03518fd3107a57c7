"""`timekd-embed`: inspect checks the model as the extraction does and reads configs as Snakemake
does; its output stays short; every option has help; --help and verify never import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from helpers import PACKAGE_ENV, snakemake, timekd_embed, timekd_embed_in_process, weather_rows
from timekd_embed.cli import parser
from timekd_embed.config import validate_config
from timekd_embed.fingerprint import Sha256Cache, current_inputs
from timekd_embed.manifest import MANIFEST, build, write
from timekd_embed.model_files import model_source
from timekd_embed.records import sha256_file
from timekd_embed.store import write_tensors

WINDOW = ["--pred-len", "24", "--split", "train", "--window", "0"]


def write_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error: ")]


# --------------------------------------------------------------------------- inspect checks the model


def test_inspect_with_the_hub_unreachable_fails_in_one_sentence(tmp_path, weather_csv):
    """It used to print "gt_ids": [] for every variable and exit 0."""
    config = write_config(tmp_path / "config.yaml", {"dataset": {"name": "weather", "csv": str(weather_csv)},
                                                     "model": {"name_or_path": "gpt2"}})
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    result = timekd_embed("inspect", "--configfile", str(config), *WINDOW, cwd=tmp_path, env=offline)
    assert result.returncode == 1
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert len(errors(result)) == 1, result.stderr
    # The workflow's jobs read a hub model from the folder its get_model rule fills: inspect does the same.
    assert errors(result)[0] == ("Error: model 'gpt2' (config key model.name_or_path) is a hub id whose files the "
                                 "workflow fetches into resources/models/gpt2, which is not there yet; run `snakemake "
                                 "--cores 1 fetch` once with network access (make preflight does), or point "
                                 "model.name_or_path at a local GPT-2 folder.")


def test_inspect_refuses_a_model_folder_the_extraction_refuses(tmp_path, weather_csv, tiny_model_dir):
    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()  # config and tokenizer only: the extraction stops here
    config = write_config(tmp_path / "config.yaml", {"dataset": {"name": "weather", "csv": str(weather_csv)},
                                                     "model": {"name_or_path": str(folder)}})
    result = timekd_embed_in_process("inspect", "--configfile", str(config), *WINDOW, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert errors(result) == [(f"Error: model folder {folder} has no model.safetensors (nor "
                               "model.safetensors.index.json with its shards); only safetensors weights are loaded "
                               "(no pickle).")]


# --------------------------------------------------------------------------- configs as Snakemake reads them


def test_inspect_reads_an_override_only_config_on_top_of_config_yaml_as_snakemake_does(tmp_path, weather_csv,
                                                                                        tiny_model_dir):
    """It used to say `missing 'dataset'` for a config file that snakemake accepts."""
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    base["dataset"]["csv"] = str(weather_csv)
    base["model"]["name_or_path"] = str(tiny_model_dir)
    write_config(tmp_path / "config" / "config.yaml", base)
    # Only two keys, one of them nested: dataset.name and dataset.csv come from config/config.yaml.
    write_config(tmp_path / "override.yaml", {"seq_len": 48, "dataset": {"target": "OT"}})

    dry = snakemake(tmp_path, None, "-n", "--cores", "1", configfile="override.yaml")
    assert dry.returncode == 0, dry.stderr[-2000:]
    result = timekd_embed_in_process("inspect", "--configfile", "override.yaml", *WINDOW, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)[-1]["gt_prompt"].split("the values were <")[1].split(">")[0].split(", ")
    assert len(seen) == 48   # seq_len of the override; 96 in config/config.yaml

    # Without config/config.yaml (as in a folder of its own) the override alone is incomplete, for both.
    (tmp_path / "config" / "config.yaml").unlink()
    alone = timekd_embed_in_process("inspect", "--configfile", "override.yaml", *WINDOW, cwd=tmp_path)
    assert alone.returncode == 1
    assert errors(alone) == [("Error: override.yaml: config key dataset is missing 'name'; add it (see "
                              "config/README.md).")]


# --------------------------------------------------------------------------- short output


def test_inspect_prints_each_token_list_on_one_line_and_one_variable_on_request(tmp_path, weather_csv, tiny_model_dir):
    """One window used to be 23,453 lines of JSON."""
    config = write_config(tmp_path / "config.yaml", {"dataset": {"name": "weather", "csv": str(weather_csv)},
                                                     "model": {"name_or_path": str(tiny_model_dir)}})
    every = timekd_embed_in_process("inspect", "--configfile", str(config), *WINDOW, cwd=tmp_path)
    assert every.returncode == 0, every.stderr
    # "[" and "]", and per variable "{", its 7 keys one line each, "}": 2 + 21 x 9 lines.
    assert len(every.stdout.splitlines()) == 191
    variables = json.loads(every.stdout)
    assert len(variables) == 21 and variables[-1]["variable"] == "OT"
    assert all(len(v["gt_ids"]) == len(v["gt_types"]) > 100 for v in variables)  # never empty

    one = timekd_embed_in_process("inspect", "--configfile", str(config), *WINDOW, "--variable", "OT", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert len(one.stdout.splitlines()) == 11 and json.loads(one.stdout) == [variables[-1]]

    unknown = timekd_embed_in_process("inspect", "--configfile", str(config), *WINDOW, "--variable", "ot", cwd=tmp_path)
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert errors(unknown)[0].startswith(f"Error: --variable 'ot' is not a column of {weather_csv}; its variables "
                                         "are 'p (mbar)', 'T (degC)',")


# --------------------------------------------------------------------------- help, version, no torch


def _option_actions(command_parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in command_parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def test_every_option_has_help_text_and_version_prints_the_package_version():
    top = parser()
    [subcommands] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subcommands.choices) >= {"inspect", "verify"}
    for name, command_parser in [("timekd-embed", top), *subcommands.choices.items()]:
        for action in _option_actions(command_parser):
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
    assert all(choice.help for choice in subcommands._choices_actions)

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    version = timekd_embed("--version")
    assert version.returncode == 0 and version.stdout == f"timekd-embed {pyproject['project']['version']}\n"


PROBE = """
import json, sys
from timekd_embed.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("torch", "transformers", "safetensors.torch") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def probe(*args: str) -> dict:
    """Run main(args) in a fresh interpreter; its exit code and the heavy modules it imported."""
    result = subprocess.run([sys.executable, "-c", PROBE, *args], check=False, capture_output=True, text=True,
                            timeout=120, env=os.environ | PACKAGE_ENV)
    return json.loads(result.stderr.strip().splitlines()[-1])


@pytest.fixture
def results_folder(tmp_path, tiny_model_dir, weather_csv) -> Path:
    """A results folder with one real embeddings file and its manifest, written as the workflow writes them."""
    shutil.copy(weather_csv, tmp_path / "weather.csv")
    shutil.copytree(tiny_model_dir, tmp_path / "gpt2")
    folder = tmp_path / "results" / "weather"
    embeddings = folder / "embeddings" / "24" / "train.safetensors"
    write_tensors(embeddings, {"embeddings": torch.zeros(2, 21, 64), "window_start": torch.arange(2)},
                  {"input_sha256": sha256_file(tmp_path / "weather.csv"),
                   "weights_sha256": sha256_file(tmp_path / "gpt2" / "model.safetensors")})
    config = validate_config({"dataset": {"name": "weather", "csv": "weather.csv"}, "model": {"name_or_path": "gpt2"}})
    write(folder / MANIFEST, build(folder, {"gather": [str(embeddings)]}, config))
    return folder


def test_help_version_and_verify_never_import_torch(results_folder):
    for args in (["--help"], ["--version"], ["inspect", "--help"], ["verify", "--help"]):
        assert probe(*args) == {"code": 0, "heavy": []}, args
    assert probe("verify", str(results_folder)) == {"code": 0, "heavy": []}
    # The weights it rechecks were read too: other weights make it fail, still without torch.
    shutil.copy(results_folder.parents[1] / "gpt2" / "config.json", results_folder.parents[1] / "gpt2" /
                "model.safetensors")
    assert probe("verify", str(results_folder)) == {"code": 1, "heavy": []}


def test_verify_rechecks_a_hub_model_where_the_jobs_load_it(tmp_path, tiny_model_dir):
    """One resolver: verify looked for a hub id's weights in the hub cache, while every job loads the files
    get_model put in resources/models/<id>/; there a changed file of the download is one sentence."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = tmp_path / "resources" / "models" / "someone" / "tiny-gpt2"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "download.json").write_text(json.dumps({"repo": "someone/tiny-gpt2", "revision": commit, "files": {
        path.name: sha256_file(path) for path in tiny_model_dir.iterdir()}}))
    hub = model_source({"name_or_path": "someone/tiny-gpt2", "revision": commit}, tmp_path)
    now = current_inputs("weather.csv", hub, Sha256Cache(None), tmp_path)
    assert now.weights_sha256 == sha256_file(tiny_model_dir / "model.safetensors") and now.damaged == ()
    (folder / "vocab.json").write_text("{}")
    damaged = current_inputs("weather.csv", hub, Sha256Cache(None), tmp_path).damaged
    assert damaged == (f"{folder / 'vocab.json'} is changed: it is not the file get_model checked against the hub "
                       f"(sha256 {sha256_file(tiny_model_dir / 'vocab.json')}, listed in {folder / 'download.json'}); "
                       "move it away (or delete it) and run `snakemake --cores 1 fetch --forcerun get_model` to fetch "
                       "it again.",)
    other = model_source({"name_or_path": "someone/other-gpt2", "revision": commit}, tmp_path)
    missing = current_inputs("weather.csv", other, Sha256Cache(None), tmp_path)
    assert missing.weights_sha256 is None and missing.notes[-1] == (
        f"the weights of model someone/other-gpt2 (model.name_or_path) are not in {other.folder} on this machine, "
        "so they were not rechecked.")


# --------------------------------------------------------------------------- --config, as Snakemake reads it


def test_inspect_reads_config_overrides_as_the_same_keys_in_a_config_file(tmp_path, weather_csv, tiny_model_dir):
    keys = {"dataset": {"name": "weather", "csv": str(weather_csv)}, "model": {"name_or_path": str(tiny_model_dir)}}
    write_config(tmp_path / "config" / "config.yaml", keys)
    override = write_config(tmp_path / "short.yaml", {"seq_len": 48, "dataset": {"template": "ETTm1"}})
    from_file = timekd_embed_in_process("inspect", *WINDOW, "--variable", "OT", "--configfile", str(override),
                                        cwd=tmp_path)
    from_line = timekd_embed_in_process("inspect", *WINDOW, "--variable", "OT", "--config", "seq_len=48",
                                        "dataset={template: ETTm1}", cwd=tmp_path)
    default = timekd_embed_in_process("inspect", *WINDOW, "--variable", "OT", cwd=tmp_path)
    assert from_line.returncode == from_file.returncode == default.returncode == 0, from_line.stderr
    assert from_line.stdout == from_file.stdout != default.stdout
    assert "every 15 minutes" in from_line.stdout and "every 15 minutes" not in default.stdout


def test_verify_checks_the_input_a_config_override_points_at(results_folder):
    work = results_folder.parents[1]
    write_config(work / "config" / "config.yaml", {"dataset": {"name": "weather", "csv": "weather.csv"},
                                                   "model": {"name_or_path": "gpt2"}})
    weather_rows(work / "other.csv", 500)
    same = timekd_embed_in_process("verify", str(results_folder), "--config", "dataset={csv: weather.csv}", cwd=work)
    assert same.returncode == 0, same.stdout + same.stderr
    other = timekd_embed_in_process("verify", str(results_folder), "--config", "dataset={csv: other.csv}", cwd=work)
    assert other.returncode == 1 and "other.csv" in other.stdout + other.stderr


def test_a_bad_config_override_is_the_sentence_snakemake_prints(tmp_path, weather_csv):
    write_config(tmp_path / "config" / "config.yaml", {"dataset": {"name": "weather", "csv": str(weather_csv)}})
    planned = snakemake(tmp_path, None, "-n", "--config", "limit_windows=x", configfile="config/config.yaml")
    sentence = ("Error: --config: config key limit_windows = 'x' is invalid: 'x' is not of type 'integer', 'null'; "
                "see config/README.md.")
    assert errors(planned) == [sentence]
    for command in (["inspect", *WINDOW], ["verify", str(tmp_path), "--configfile", "config/config.yaml"],
                    ["preflight"]):
        result = timekd_embed_in_process(*command, "--config", "limit_windows=x", cwd=tmp_path)
        assert (result.returncode, errors(result)) == (1, [sentence]), command
    # A target typed after --config: Snakemake reads it as an entry; so does the CLI, in one sentence.
    result = timekd_embed_in_process("inspect", *WINDOW, "--config", "export_timekd", cwd=tmp_path)
    assert result.returncode == 1 and errors(result) == [
        "Error: --config 'export_timekd' is not KEY=VALUE (Invalid config definition: Config entries have to be "
        "defined as name=value pairs); every word after --config up to the next option is read as a config entry, "
        "so put targets before it (README.md, \"Quick start\")."]
