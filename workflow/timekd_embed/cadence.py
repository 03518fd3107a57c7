"""The rows' usual time step against what the split layout, the stamp format and the template assume.

The ETT layouts count a month as 30 days of hourly (`ett_hour`) or 15-minute
(`ett_minute`) rows, and the published code writes the stamps of ETTh1, ETTh2 and ECL as
`HH:00` (published data_provider/data_loader_save.py and store_emb.py of TimeKD, Liu et
al., ICDE 2025); every stamp stops at the minute. Data with another step would get other
borders or lose minutes or seconds from the prompt: an InputError. A template whose
wording ("every hour") does not match the step is how the published code words it
(weather under the ETTh1 fallback); it stays, and `template_note` says so in the log and
the windows metadata.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import InputError
from .prompts import HOURLY_STAMP_NAMES, TEMPLATES, template_key
from .table import Table

LAYOUT_STEP_SECONDS = {"ett_hour": 3600, "ett_minute": 900}
LAYOUT_FIX = {"ett_hour": "an ETTm name (layout ett_minute)", "ett_minute": "an ETTh name (layout ett_hour)"}
TEMPLATE_STEP_SECONDS = {"ETTh1": 3600, "ETTh2": 3600, "ETTm1": 900, "ETTm2": 900, "Weather": 600, "Exchange": 86400}


def step_text(seconds: float) -> str:
    """A step in words: 900 -> '15 min', 3600 -> '1 h', 86400 -> '1 day'.

    Args:
        seconds: the step, in seconds.
    Returns:
        The words.
    """

    if seconds % 86400 == 0:
        days = int(seconds // 86400)
        return f"{days} day" + ("s" if days != 1 else "")
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def check_cadence(table: Table, name: str, layout: str) -> None:
    """Refuse data whose step contradicts the layout's borders or the stamp format.

    Args:
        table: the checked CSV (its irregularities hold the usual step).
        name: config key dataset.name (decides the HH:00 stamp format).
        layout: the concrete layout (config key dataset.layout, "auto" resolved from the name).
    Raises:
        InputError: an ETT layout whose step is not the data's usual step (the borders
            would cover another span of time), stamps with seconds (no published format
            writes them), or an HH:00 stamp name for data with minutes (the prompts would
            drop them); naming the key, the step and the fix.
    """
    usual = table.irregularities["gaps"]["usual_step_seconds"]
    file = table.path
    expected = LAYOUT_STEP_SECONDS.get(layout)
    if expected is not None and usual and usual != expected:
        raise InputError(
            f"{file}: config key dataset.layout is {layout} (chosen by dataset.name {name!r} when the layout is "
            f"auto), which counts a month as 30 days of {step_text(expected)} rows, but the file's usual step is "
            f"{step_text(usual)}, so the split borders would cover another span of time; set dataset.name to "
            f"{LAYOUT_FIX[layout]} or dataset.layout to the layout of this data (custom for 70/10/20 %).")
    dates = table.dates
    below_minute = (np.asarray(dates.second) != 0) | (np.asarray(dates.microsecond) != 0) | (
        np.asarray(dates.nanosecond) != 0)
    finer = np.flatnonzero(below_minute)
    if len(finer):  # every published stamp format stops at the minute
        row = int(finer[0])
        raise InputError(
            f"{file}, line {row + 2}: the prompts write stamps to the minute (DD/MM/YYYY HH:MM, the published "
            f"format), but the file's usual step is {step_text(usual or 0)} and {dates[row]} would lose its "
            f"seconds; resample the data to whole minutes.")
    if name in HOURLY_STAMP_NAMES:
        with_minutes = np.flatnonzero(np.asarray(dates.minute) != 0)
        if len(with_minutes):
            row = int(with_minutes[0])
            raise InputError(
                f"{file}, line {row + 2}: config key dataset.name {name!r} writes the prompts' stamps as HH:00 "
                f"(the published format for {', '.join(HOURLY_STAMP_NAMES)}), but the file's usual step is "
                f"{step_text(usual or 0)} and {dates[row]} would lose its minutes; use a dataset.name outside "
                f"{', '.join(HOURLY_STAMP_NAMES)} for this data (dataset.template keeps the wording you want).")


def template_note(name: str, template: str | None, usual_step_seconds: float | None, file: str) -> str | None:
    """One line when the template's wording of the step differs from the data's usual step, else None.

    Such wording is kept (it is what the published code writes, e.g. "every hour" for
    10-minute weather data under the ETTh1 fallback), but a reader should see it.

    Args:
        name: config key dataset.name; template: config key dataset.template (None: by name).
        usual_step_seconds: the data's most common step (Table.irregularities["gaps"]).
        file: the CSV's name, for the message.
    Returns:
        The note, naming the template, its wording and the measured step; None when they agree.
    """
    key = template_key(name, template)
    expected = TEMPLATE_STEP_SECONDS[key]
    if not usual_step_seconds or usual_step_seconds == expected:
        return None
    wording = re.search(r"every [^.]*", TEMPLATES[key][0]).group(0)
    chosen = "set by dataset.template" if template is not None else f"picked for dataset.name {name!r}"
    return (f"{file}: the prompt template {key} ({chosen}) says {wording!r} but the data's usual step is "
            f"{step_text(usual_step_seconds)}; kept, as the published code words it (dataset.template changes it).")
