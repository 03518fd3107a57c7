"""`timekd-embed`: look at what the teacher reads, and verify a results folder, without running the workflow."""

from __future__ import annotations

import argparse
import json
import sys

from .config import load_config_file
from .errors import InputError
from .jobs import job


def inspect(args) -> list[dict]:
    """The GT/HD prompts, token ids and token types of one window, one object per variable."""
    from .lm import load_tokenizer
    from .prompts import SplitPrompts
    from .windows import load_csv, resolve_layout, split_borders

    config = load_config_file(args.configfile)
    data = config["dataset"]
    layout = resolve_layout(data["layout"], data["name"])
    table = load_csv(data["csv"], target=data["target"], layout=layout)
    start, stop = split_borders(len(table.values), config["seq_len"], layout)[args.split]
    stamps = _stamps(table.dates[start:stop])
    tokenizer = load_tokenizer(config["model"]["name_or_path"], config["model"]["revision"])
    prompts = SplitPrompts(tokenizer, table.values[start:stop], stamps, data["name"], args.pred_len,
                           config["seq_len"], data["template"])
    if not 0 <= args.window < prompts.n_windows:
        raise InputError(f"--window {args.window} is outside split {args.split}, which has "
                         f"{prompts.n_windows} windows at pred_len {args.pred_len} (0..{prompts.n_windows - 1}).")
    result = []
    for variable, (gt, hd) in zip(table.variables, prompts.window_texts(args.window)):
        gt_ids, hd_ids = tokenizer([gt, hd], add_special_tokens=False)["input_ids"]
        kind = lambda ids: ["time_series" if t else "language" for t in prompts.types(ids)]
        result.append({"variable": variable, "gt_prompt": gt, "hd_prompt": hd, "gt_ids": gt_ids,
                       "hd_ids": hd_ids, "gt_types": kind(gt_ids), "hd_types": kind(hd_ids)})
    return result


def _stamps(dates):
    import numpy as np
    return np.stack([dates.year, dates.month, dates.day, dates.dayofweek, dates.hour, dates.minute], axis=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="timekd-embed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="print the prompts, token ids and token types of one window as JSON")
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_argument("--pred-len", type=int, required=True)
    p.add_argument("--split", choices=["train", "val", "test"], required=True)
    p.add_argument("--window", type=int, required=True)
    v = sub.add_parser("verify", help="recompute the sha256 of every artifact listed in <folder>/MANIFEST.json; "
                                      "exit 1 naming each changed, missing or unlisted file")
    v.add_argument("folder", help="a results folder, such as results/weather")
    # -- preflight (issue #14): speed, memory and precision checks before the real run
    f = sub.add_parser("preflight", help="measure speed, memory, ETA and fp32 parity on a few windows per horizon, "
                                         "with the configured model and devices; exit 1 naming a failed check")
    f.add_argument("--configfile", default="config/config.yaml")
    f.add_argument("--windows", type=int, default=8, help="sample windows per horizon (default 8)")
    f.add_argument("--out", default=None, help="folder of preflight.{json,md} (default results/<name>)")
    # -- end preflight
    args = parser.parse_args(argv)
    with job(None):
        if args.command == "inspect":
            json.dump(inspect(args), sys.stdout, ensure_ascii=False, indent=1)
            sys.stdout.write("\n")
        elif args.command == "verify":
            from .manifest import main_verify
            sys.exit(main_verify(args.folder))
        if args.command == "preflight":  # issue #14; leases the job's GPUs itself
            from .preflight import main as preflight_main
            preflight_main(args.configfile, args.windows, args.out)


if __name__ == "__main__":
    main()
