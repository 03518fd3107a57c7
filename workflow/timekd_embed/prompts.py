"""Window -> GT/HD prompt text -> GPT-2 token ids -> token types: docs/teacher.md sections 2-3.

References: the published store_emb.py (templates, time stamps, value formatting) and
clm.py (the token-type walk that the calibrated mask reads).

Two ways to the same token ids:
- `prompt_texts` + the tokenizer: the published code's way, used by `inspect` and tests.
- `SplitPrompts`: assembles ids from cached pieces. GPT-2's byte-level pre-tokenizer
  splits the text at every boundary between a value and its separator, so the ids of
  ", 1008" or " <-2" never depend on their neighbours. Tokenizing each distinct piece
  once makes prompt building thousands of times cheaper than tokenizing whole prompts
  and gives every prompt's exact length before any model work. `SplitPrompts` checks
  itself against the tokenizer on construction.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .errors import InputError

VALUES = "value1, ..., valuen"
FUTURE = "gt1, ..., gtn"

# (GT, HD) template pairs of the published code, looked up by exact dataset name.
_HOUR = ("the values were", "every hour", "The values for the next <output_len> hours are",
         "Forecast the values for the next <output_len> hours")
_MIN15 = ("the values were", "every 15 minutes", "The values for the next <output_len> minutes are",
          "Forecast the values for the next <output_len> minutes")
_MIN10 = ("the values were", "every 10 minutes", "The values for the next <output_len> minutes are",
          "Forecast the values for the next <output_len> minutes")
_DAY = ("the exchange rates were", "every day", "The rates for the next <output_len> days are",
        "Forecast the rates for the next <output_len> days")


def _pair(subject: str, every: str, gt_tail: str, hd_tail: str) -> tuple[str, str]:
    head = f"From <t1> to <t2>, {subject} <{VALUES}> {every}."
    return f"{head} {gt_tail} <{FUTURE}>", f"{head} {hd_tail}"


TEMPLATES: dict[str, tuple[str, str]] = {
    "ETTh1": _pair(*_HOUR),
    "ETTh2": _pair(*_HOUR),
    "Exchange": _pair(*_DAY),
    "ETTm1": _pair(*_MIN15),
    "ETTm2": _pair(*_MIN15),
    "Weather": _pair(*_MIN10),
}
FALLBACK_TEMPLATE = "ETTh1"  # the published lookup falls back to it, so "weather" gets "every hour"
HOURLY_STAMP_NAMES = ("ETTh1", "ETTh2", "ECL")  # the published code writes HH:00 for these names

TS_OPEN, TS_CLOSE = "Ġ<", ">"  # the only token strings that open / close a time-series span


def template_key(dataset_name: str, template: str | None = None) -> str:
    """The template a dataset gets: the configured one, else exact lookup with fallback
    (the published store_emb.py falls back to ETTh1's).

    Args:
        dataset_name: config key dataset.name.
        template: config key dataset.template, or None.
    Returns:
        A key of TEMPLATES.
    Raises:
        InputError: `template` is not a key of TEMPLATES.
    """
    if template is not None:
        if template not in TEMPLATES:
            raise InputError(f"config key dataset.template = {template!r} is unknown; use one of "
                             f"{', '.join(TEMPLATES)} or null.")
        return template
    return dataset_name if dataset_name in TEMPLATES else FALLBACK_TEMPLATE


def stamp_text(stamp, dataset_name: str) -> str:
    """`DD/MM/YYYY HH:MM` from a (year, month, day, weekday, hour, minute) row, as store_emb.py
    writes it (minutes 00 for the HOURLY_STAMP_NAMES).

    Args:
        stamp: 6 ints (a row of table.stamps).
        dataset_name: config key dataset.name.
    Returns:
        The stamp text.
    """
    year, month, day, _, hour, minute = (int(field) for field in stamp)
    minutes = "00" if dataset_name in HOURLY_STAMP_NAMES else f"{minute:02d}"
    return f"{day:02d}/{month:02d}/{year:04d} {hour:02d}:{minutes}"


def value_text(value: float) -> str:
    """A value as the prompts write it: truncated toward zero, as the published code does.

    Args:
        value: a raw value.
    Returns:
        Its integer part as text: -2.7 -> "-2".
    """
    return str(int(value))


def prompt_texts(x: np.ndarray, y: np.ndarray, t1: str, t2: str, pred_len: int,
                 pair: tuple[str, str]) -> tuple[str, str]:
    """GT and HD prompt of one variable (the published store_emb.py's text, docs/teacher.md section 2).

    Args:
        x: (seq_len,) raw input values; y: (pred_len,) raw future values.
        t1, t2: the first and last input row's stamp_text.
        pred_len: the horizon P.
        pair: the (GT, HD) template of TEMPLATES.
    Returns:
        (GT text, HD text).
    """
    values = ", ".join(value_text(value) for value in x)
    future = ", ".join(value_text(value) for value in y)
    gt = pair[0].replace(VALUES, values).replace(FUTURE, future).replace("output_len", str(pred_len))
    hd = pair[1].replace(VALUES, values).replace("output_len", str(pred_len))
    # Same replacement order as the published code: the stamps go in last.
    return (gt.replace("t1", t1).replace("t2", t2), hd.replace("t1", t1).replace("t2", t2))


def time_series_flags(ids: np.ndarray, open_id: int, close_id: int) -> np.ndarray:
    """Spec section 3 as a vectorised flag walk: True where a token is typed time-series.

    `Ġ<` opens a span and is time-series, `>` closes it and is time-series, tokens while
    open are time-series. Other tokens that merely contain < or > (`Ġ<-`, `>,`) do nothing.

    Args:
        ids: (L,) int token ids of one prompt.
        open_id, close_id: the ids of TS_OPEN and TS_CLOSE.
    Returns:
        (L,) bool flags.
    """
    ids = np.asarray(ids)
    opens, closes = ids == open_id, ids == close_id
    length = len(ids)
    last_event = np.where(opens | closes, np.arange(length), -1)
    np.maximum.accumulate(last_event, out=last_event)
    open_after = np.where(last_event >= 0, opens[np.maximum(last_event, 0)], False)
    open_before = np.concatenate([[False], open_after[:-1]])
    return opens | closes | open_before


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's ids without special tokens, from the fast tokenizer's Rust backend when it neither
    truncates nor pads (the Python wrapper's per-text conversion was half of a split's prompt
    building); SplitPrompts checks the result against the tokenizer itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation or backend.padding:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]


class _Pieces:
    """Token ids of many short texts, each distinct text tokenized once, stored flat.

    Args:
        tokenizer: the GPT-2 tokenizer.
        distinct: the distinct texts.
        which: (n,) int64, the piece at each position as an index into `distinct`.
    """

    def __init__(self, tokenizer, distinct: list[str], which: np.ndarray):
        encoded = _token_ids(tokenizer, distinct)
        distinct_lens = np.array([len(piece_ids) for piece_ids in encoded], dtype=np.int64)
        distinct_flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64,
                                    count=int(distinct_lens.sum()))
        distinct_starts = np.cumsum(distinct_lens) - distinct_lens
        lens = distinct_lens[which]
        self.offsets = np.concatenate([[0], np.cumsum(lens)])  # (n + 1,)
        # each position's ids copied from its distinct text's, in one gather
        self.flat = distinct_flat[np.repeat(distinct_starts[which] - self.offsets[:-1], lens)
                                  + np.arange(self.offsets[-1])]

    @classmethod
    def of_texts(cls, tokenizer, texts: list[str]) -> _Pieces:
        """The pieces `texts`, in order."""
        index = {text: position for position, text in enumerate(dict.fromkeys(texts))}
        return cls(tokenizer, list(index), np.fromiter((index[text] for text in texts), dtype=np.int64,
                                                       count=len(texts)))

    def span(self, start: int, stop: int) -> np.ndarray:
        """Ids of pieces start..stop-1 concatenated: (tokens,) int64, a view."""
        return self.flat[self.offsets[start]:self.offsets[stop]]

    def span_lengths(self, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """Token counts of the spans start..stop-1, elementwise: (W,) int64."""
        return self.offsets[stop] - self.offsets[start]


@dataclass(frozen=True)
class WindowIds:
    """Token ids of the 2N prompts of one window."""
    gt: list[np.ndarray]   # N arrays of int64
    hd: list[np.ndarray]


class SplitPrompts:
    """Token ids and exact lengths of every prompt of one split and horizon.

    raw: (R, N) raw values of the split's rows; stamps: (R, 6) int rows of
    (year, month, day, weekday, hour, minute). Window i reads rows i..i+seq_len-1 and
    predicts rows i+seq_len..i+seq_len+pred_len-1.
    """

    def __init__(self, tokenizer, raw: np.ndarray, stamps: np.ndarray, dataset_name: str,
                 pred_len: int, seq_len: int = 96, template: str | None = None):
        self.tokenizer, self.raw, self.stamps = tokenizer, raw, stamps
        self.name, self.pred_len, self.seq_len = dataset_name, pred_len, seq_len
        self.pair = TEMPLATES[template_key(dataset_name, template)]
        rows, n_vars = raw.shape
        self.n_windows = max(0, rows - seq_len - pred_len + 1)
        self.n_vars = n_vars
        self.open_id, self.close_id = tokenizer.convert_tokens_to_ids([TS_OPEN, TS_CLOSE])

        # The text around the values, split where the pre-tokenizer always splits.
        gt, hd = (template.replace("output_len", str(pred_len)) for template in self.pair)
        head, gt_rest = gt.split(f" <{VALUES}")    # gt_rest starts with the closing ">"
        head_a, head_b = head.split(" to <t2>")
        mid, close = gt_rest.split(f" <{FUTURE}")  # close is the final ">"
        hd_tail = hd.split(f" <{VALUES}")[1]
        stamps_text = [stamp_text(stamp, dataset_name) for stamp in stamps]
        self._head_a = _Pieces.of_texts(tokenizer, [head_a.replace("t1", stamp) for stamp in stamps_text])  # as t1
        self._head_b = _Pieces.of_texts(tokenizer, [f" to <{stamp}>{head_b}" for stamp in stamps_text])  # as t2

        def encode(text: str) -> np.ndarray:
            """The text's token ids: (tokens,) int64."""

            return np.array(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

        self._gt_mid, self._hd_tail, self._close = encode(mid), encode(hd_tail), encode(close)
        # Per variable: each row's value as the first of a list (" <v") and as a later one (", v"),
        # from the column's distinct truncated values (value_text truncates; -0.0 and 0.0 are one).
        self._first, self._later = [], []
        for variable in range(n_vars):
            values, which = np.unique(np.trunc(raw[:, variable]), return_inverse=True)
            texts = [value_text(value) for value in values]
            self._first.append(_Pieces(tokenizer, [" <" + text for text in texts], which.reshape(-1)))
            self._later.append(_Pieces(tokenizer, [", " + text for text in texts], which.reshape(-1)))
        self._check_against_tokenizer()

    # -- ids ---------------------------------------------------------------------------
    def _values(self, variable: int, start: int, count: int) -> list[np.ndarray]:
        return [self._first[variable].span(start, start + 1), self._later[variable].span(start + 1, start + count)]

    def window_ids(self, i: int) -> WindowIds:
        """Token ids of window i's 2N prompts, assembled from the cached pieces.

        Args:
            i: the window's index, 0 <= i < n_windows.
        Returns:
            WindowIds: N GT and N HD (L,) int64 arrays, equal to the tokenizer's ids of window_texts(i).
        """
        L, P = self.seq_len, self.pred_len
        head = [self._head_a.span(i, i + 1), self._head_b.span(i + L - 1, i + L)]
        gt, hd = [], []
        for variable in range(self.n_vars):
            shared = head + self._values(variable, i, L)
            hd.append(np.concatenate(shared + [self._hd_tail]))
            gt.append(np.concatenate(shared + [self._gt_mid] + self._values(variable, i + L, P) + [self._close]))
        return WindowIds(gt=gt, hd=hd)

    def lengths(self, windows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact token counts of the GT and HD prompts, without building them.

        Args:
            windows: (W,) int window indices; None: every window.
        Returns:
            (gt, hd): two (W, N) int64 arrays.
        """
        i = np.arange(self.n_windows) if windows is None else np.asarray(windows, dtype=np.int64)
        L, P = self.seq_len, self.pred_len
        head = self._head_a.span_lengths(i, i + 1) + self._head_b.span_lengths(i + L - 1, i + L)
        gt = np.empty((len(i), self.n_vars), dtype=np.int64)
        hd = np.empty_like(gt)
        for variable in range(self.n_vars):
            first, later = self._first[variable], self._later[variable]
            values = first.span_lengths(i, i + 1) + later.span_lengths(i + 1, i + L)
            future = first.span_lengths(i + L, i + L + 1) + later.span_lengths(i + L + 1, i + L + P)
            hd[:, variable] = head + values + len(self._hd_tail)
            gt[:, variable] = head + values + len(self._gt_mid) + future + len(self._close)
        return gt, hd

    # -- text (for inspection and the self-check) --------------------------------------
    def window_texts(self, i: int) -> list[tuple[str, str]]:
        """Window i's prompts as text, the published way (prompt_texts).

        Args:
            i: the window's index, 0 <= i < n_windows.
        Returns:
            N (GT text, HD text) pairs, in variable order.
        """
        L, P = self.seq_len, self.pred_len
        t1, t2 = stamp_text(self.stamps[i], self.name), stamp_text(self.stamps[i + L - 1], self.name)
        return [prompt_texts(self.raw[i:i + L, variable], self.raw[i + L:i + L + P, variable], t1, t2, P,
                             self.pair)
                for variable in range(self.n_vars)]

    def types(self, ids: np.ndarray) -> np.ndarray:
        """Token types of one prompt (time_series_flags).

        Args:
            ids: (L,) int token ids.
        Returns:
            (L,) bool, True for time series.
        """

        return time_series_flags(ids, self.open_id, self.close_id)

    def _check_against_tokenizer(self) -> None:
        """Assembled ids must equal the tokenizer's on a real window; else this tokenizer splits differently."""
        if self.n_windows == 0:
            return
        i = self.n_windows - 1
        texts = self.window_texts(i)
        ids = self.window_ids(i)
        for variable, (gt_text, hd_text) in enumerate(texts):
            want = self.tokenizer([gt_text, hd_text], add_special_tokens=False)["input_ids"]
            if list(ids.gt[variable]) != want[0] or list(ids.hd[variable]) != want[1]:
                raise InputError(
                    f"the tokenizer of this model does not split prompts like GPT-2's byte-level BPE "
                    f"(window {i}, variable {variable}); use a GPT-2-family tokenizer.")
