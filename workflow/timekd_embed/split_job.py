"""What a job needs of one split before any model work: its windows at every horizon, their
prompts, and the check that every prompt fits the model's context.

The extraction, the parity check, the preflight and the benchmark all prepare a split here,
so they plan the same windows and word the same errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .prompts import SplitPrompts
from .settings import Settings
from .shards import no_windows, planned_windows
from .table import stamps
from .windows import SplitWindows


@dataclass(frozen=True)
class SplitJob:
    """One split prepared for a job: prompts[P] holds windows 0 .. prompts[P].n_windows - 1 of
    horizon P (limit_windows applied); longest[P] is their longest prompt, in tokens."""
    split: str
    variables: list[str]
    prompts: dict[int, SplitPrompts]
    longest: dict[int, int]

    def windows(self, pred_len: int) -> int:
        """The windows of one horizon."""
        return self.prompts[pred_len].n_windows


def check_context(prompts: SplitPrompts, context: int, split: str, windows: np.ndarray,
                  variables: list[str]) -> int:
    """Fail before any model work when a prompt cannot fit; return the longest prompt (0 for no window).

    Args:
        prompts: the split's prompts at one horizon.
        context: the model's context length.
        split: the split's name; windows: (W,) window indices to check; variables: the names (for the message).
    Raises:
        InputError: a prompt has more tokens than the context (horizon, window and variable named).
    """
    gt, _ = prompts.lengths(windows)           # GT prompts are the longer ones
    if gt.size == 0:
        return 0
    window_pos, variable = np.unravel_index(int(gt.argmax()), gt.shape)
    longest = int(gt[window_pos, variable])
    if longest > context:
        raise InputError(
            f"pred_len {prompts.pred_len}, split {split}: the longest prompt has {longest} tokens "
            f"(window {windows[window_pos]}, variable {variables[variable]!r}) but the model reads at most "
            f"{context}; remove {prompts.pred_len} from pred_lens or use a model with a longer context.")
    return longest


def prepare_split(tokenizer, split: SplitWindows, settings: Settings, pred_lens: list[int], context: int,
                  up_to: int | None = None) -> SplitJob:
    """The split's prompts at every horizon, built from the rows their windows read only, every
    prompt checked against the context.

    Args:
        tokenizer: the model's tokenizer.
        split: the split's rows (windows.read_windows, or windows.split_windows in memory).
        settings: the job's settings (dataset name, template, limit_windows).
        pred_lens: the horizons.
        context: the model's context length, in tokens.
        up_to: prompts of windows 0 .. up_to - 1 only (a parity sample, a benchmark); None: every
            window the job embeds. Never more than the split has.
    Raises:
        InputError: no window at some horizon (shards.no_windows), or a prompt longer than the context.
    """
    seq_len = split.meta["seq_len"]
    prompts, longest = {}, {}
    for pred_len in pred_lens:
        count = planned_windows(len(split.rows), seq_len, pred_len, settings.limit_windows)
        if count == 0:
            raise no_windows(split.split, len(split.rows), seq_len, pred_len)
        count = count if up_to is None else min(count, up_to)
        rows = slice(0, count - 1 + seq_len + pred_len)  # the rows windows 0..count-1 read
        prompts[pred_len] = SplitPrompts(tokenizer, split.raw[rows], stamps(split.dates[rows]), settings.name,
                                         pred_len, seq_len, settings.template)
        longest[pred_len] = check_context(prompts[pred_len], context, split.split, np.arange(count),
                                          split.variables)
    return SplitJob(split.split, list(split.variables), prompts, longest)
