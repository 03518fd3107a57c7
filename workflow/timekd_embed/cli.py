"""`timekd-embed`: look at what the teacher reads, and verify a results folder, without running the workflow.

Each subcommand is a `Subcommand` in SUBCOMMANDS: its options (added with cheap imports
only) and its run function (which imports what it needs). `timekd-embed --help` and
`timekd-embed verify` never import torch, so they answer in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from . import __version__
from .config import load_run_config
from .errors import InputError
from .store import refused_write


@dataclass(frozen=True)
class Subcommand:
    """One `timekd-embed <name>` command.

    add_arguments adds its options to its parser (cheap imports only: --help must stay
    light); run does the work and returns the exit status. An InputError raised by run is
    printed as one sentence with exit status 1.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def with_local_model(config: dict) -> dict:
    """The config with its model as every workflow job loads it: a hub id becomes the folder the
    get_model rule fills (`snakemake --cores 1 fetch`; `make preflight` runs it first).

    Args:
        config: the validated config.
    Returns:
        A copy with config["model"] as model_files.local_model gives it.
    Raises:
        InputError: a hub id whose folder get_model has not filled yet, or as model_source.
    """
    from .model_files import local_model, model_source

    source = model_source(config["model"])
    if source.hub and not source.folder.is_dir():
        raise InputError(f"model {source.name!r} (config key model.name_or_path) is a hub id whose files the "
                         f"workflow fetches into {source.folder}, which is not there yet; run `snakemake --cores 1 "
                         "fetch` once with network access (make preflight does), or point model.name_or_path at a "
                         "local GPT-2 folder.")
    return config | {"model": local_model(config["model"])}


# --------------------------------------------------------------------------- inspect


def inspect(args: argparse.Namespace) -> list[dict]:
    """The GT/HD prompts, token ids and token types of one window, one object per variable.

    The model is checked exactly as the extraction checks it (checkpoint.check_model: config,
    safetensors weights, tokenizer, vocabulary size), so an unreachable hub or a broken
    folder is one sentence, never empty token lists.

    Args:
        args: configfile and config (lists or None), pred_len, split, window, variable (or None).

    Returns:
        [{variable, gt_prompt, hd_prompt, gt_ids, hd_ids, gt_types, hd_types}], ids int,
        types "time_series" or "language", one per token.

    Raises:
        InputError: bad config, CSV or model; a window or variable the split does not have.
    """
    from .cadence import check_cadence
    from .checkpoint import check_model
    from .prompts import SplitPrompts
    from .table import load_csv, stamps
    from .windows import split_borders, window_count

    config = with_local_model(load_run_config(args.configfile, command_line=args.config))
    data = config["dataset"]
    _, tokenizer = check_model(config["model"]["name_or_path"], config["model"]["revision"])
    layout = data["layout"]  # concrete: validate_config resolves "auto"
    table = load_csv(data["csv"], target=data["target"], layout=layout, date_format=data["date_format"])
    check_cadence(table, data["name"], layout)  # the prompts shown are those the workflow would accept
    if args.variable is not None and args.variable not in table.variables:
        raise InputError(f"--variable {args.variable!r} is not a column of {data['csv']}; its variables are "
                         f"{', '.join(map(repr, table.variables))}.")
    start, stop = split_borders(len(table.values), config["seq_len"], layout)[args.split]
    n_windows = window_count(stop - start, config["seq_len"], args.pred_len)
    if not 0 <= args.window < n_windows:
        raise InputError(f"--window {args.window} is outside split {args.split}, which has "
                         f"{n_windows} windows at pred_len {args.pred_len} (0..{n_windows - 1}).")
    # The window's own rows: its prompts read nothing else (the whole split's took seconds).
    rows = slice(start + args.window, start + args.window + config["seq_len"] + args.pred_len)
    prompts = SplitPrompts(tokenizer, table.values[rows], stamps(table.dates[rows]), data["name"],
                           args.pred_len, config["seq_len"], data["template"])

    def kinds(ids: list[int]) -> list[str]:
        """Each token's type in words."""
        return ["time_series" if flag else "language" for flag in prompts.types(ids)]

    result = []
    for variable, (gt, hd) in zip(table.variables, prompts.window_texts(0)):
        if args.variable is not None and variable != args.variable:
            continue
        gt_ids, hd_ids = tokenizer([gt, hd], add_special_tokens=False)["input_ids"]
        result.append({"variable": variable, "gt_prompt": gt, "hd_prompt": hd, "gt_ids": gt_ids,
                       "hd_ids": hd_ids, "gt_types": kinds(gt_ids), "hd_types": kinds(hd_ids)})
    return result


def format_objects(objects: list[dict]) -> str:
    """JSON with one line per key: a list (token ids, token types) stays on its key's line.

    A window of weather at P = 24 is about 40 lines instead of 23,000, and stays valid JSON.

    Args:
        objects: JSON-able dicts (inspect's one per variable).
    Returns:
        The JSON text of the list.
    """
    blocks = []
    for obj in objects:
        fields = [f"  {json.dumps(key, ensure_ascii=False)}: {json.dumps(value, ensure_ascii=False)}"
                  for key, value in obj.items()]
        blocks.append(" {\n" + ",\n".join(fields) + "\n }")
    return "[\n" + ",\n".join(blocks) + "\n]\n" if blocks else "[]\n"


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    _configfile_argument(parser, "the run's config file(s), each on top of config/config.yaml as in snakemake "
                                 "--configfile (default: config/config.yaml alone)")
    parser.add_argument("--pred-len", type=int, required=True, metavar="P",
                        help="the forecast horizon P, in time steps (one of the config's pred_lens, or any other)")
    parser.add_argument("--split", choices=["train", "val", "test"], required=True, help="the split of the window")
    parser.add_argument("--window", type=int, required=True, metavar="K",
                        help="the window's index in its split, from 0 (window K reads rows K..K+seq_len-1)")
    parser.add_argument("--variable", metavar="NAME",
                        help="print only this variable (a CSV column name, e.g. 'OT'); default: every variable")


def _run_inspect(args: argparse.Namespace) -> int:
    # The CSV's warnings (gaps, sentinels) on stderr, as in the windows job's log.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.captureWarnings(True)
    sys.stdout.write(format_objects(inspect(args)))
    return 0


# --------------------------------------------------------------------------- verify


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a results folder, such as results/weather")
    parser.add_argument("--manifest", metavar="PATH",
                        help="compare with this manifest instead of <folder>/MANIFEST.json, e.g. another run's: "
                             "it passes when every artifact has the same bytes, and names the run records "
                             "(timings, host names) that differ")
    _configfile_argument(parser, "check that the embeddings were made from the CSV and weights this config points "
                                 "at (merged onto config/config.yaml as in snakemake --configfile); default: the "
                                 "CSV and model the run's manifest records")


def _run_verify(args: argparse.Namespace) -> int:
    from .verify import main_verify
    config = load_run_config(args.configfile, command_line=args.config) if args.configfile or args.config else None
    return main_verify(args.folder, args.manifest, config)


def _clean_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a results folder, such as results/weather, after the workflow finished")


def _run_clean(args: argparse.Namespace) -> int:
    from .verify import main_clean
    return main_clean(args.folder)


# --------------------------------------------------------------------------- preflight


def _preflight_arguments(parser: argparse.ArgumentParser) -> None:
    _configfile_argument(parser, "the run's config file(s), each on top of config/config.yaml as in snakemake "
                                 "--configfile (default: config/config.yaml alone)")
    parser.add_argument("--windows", type=int, default=8, metavar="K",
                        help="sample windows per horizon, spread over the first configured split (default 8)")
    parser.add_argument("--out", metavar="DIR", help="folder of preflight.json and preflight.md "
                                                     "(default: results/<dataset.name>)")


def _run_preflight(args: argparse.Namespace) -> int:
    # Progress and the device map on stderr, as in a job's log; the report on stdout.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.captureWarnings(True)
    from .preflight import main as preflight_main
    preflight_main(with_local_model(load_run_config(args.configfile, command_line=args.config)), args.windows, args.out)
    return 0


def _configfile_argument(parser: argparse.ArgumentParser, text: str) -> None:
    """--configfile FILE ... and --config KEY=VALUE ..., read as `snakemake` reads them."""
    parser.add_argument("--configfile", nargs="+", action="extend", metavar="FILE", help=text)
    parser.add_argument("--config", nargs="+", action="extend", metavar="KEY=VALUE",
                        help="config keys on top of the config files, as in snakemake --config (e.g. limit_windows=4 "
                             "'pred_lens=[24, 48]' 'dataset={name: demo}'); quote lists and mappings")


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("inspect", "print the prompts, token ids and token types of one window as JSON "
                          "(one line per prompt, id list and type list)", _inspect_arguments, _run_inspect),
    Subcommand("verify", "recompute the sha256 of every file listed in a results folder's MANIFEST.json (or "
                         "another run's) and check the embeddings' recorded weights and input; exit 1 naming each "
                         "problem", _verify_arguments, _run_verify),
    Subcommand("clean", "remove from a results folder what the workflow wrote there that its MANIFEST.json no "
                        "longer lists (a dropped horizon's files, records of files that are gone, interrupted "
                        "writes); a file the workflow did not write is never removed", _clean_arguments, _run_clean),
    Subcommand("preflight", "before a long run: speed, memory, ETA and fp32 parity on a few windows per horizon, "
                            "with the configured model, precision, placement and GPUs, and the GPU checks; writes "
                            "results/<name>/preflight.{json,md}; exit 1 naming a failed check",
               _preflight_arguments, _run_preflight),
]


def parser() -> argparse.ArgumentParser:
    """The `timekd-embed` argument parser, one subparser per SUBCOMMANDS entry."""
    top = argparse.ArgumentParser(prog="timekd-embed", description=__doc__.splitlines()[0])
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                     help="print the package version and exit")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        sub.add_parser(command.name, help=command.help, description=command.help).set_defaults(subcommand=command)
        command.add_arguments(sub.choices[command.name])
    return top


def main(argv: list[str] | None = None) -> None:
    """The console script: exit status 0, 1 for bad input (one sentence on stderr), 130 on Ctrl-C.

    Args:
        argv: the arguments after the program name; None: sys.argv[1:].
    Raises:
        SystemExit: always, with the status.
    """

    args = parser().parse_args(argv)
    try:
        status = args.subcommand.run(args)
    except InputError as error:
        print(f"Error: {error}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        status = 130
    except Exception as error:  # a full disk or a read-only folder under the report preflight writes
        sentence = refused_write(error)
        if sentence is None:
            raise
        print(f"Error: {sentence}", file=sys.stderr)
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
