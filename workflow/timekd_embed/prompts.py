"""Window -> GT/HD prompt text -> the model's token ids -> token types: docs/teacher.md sections 2-3.

References: the published store_emb.py (templates, time stamps, value formatting) and
clm.py (the token-type walk that the calibrated mask reads).

The token ids are what the published `tokenizer.encode(prompt)` gives with the model's own
tokenizer: its default special tokens included (the BOS of Llama-family and Phi-3 tokenizers).
Two ways to the same ids:
- `prompt_texts` + the tokenizer: the published code's way, used by `inspect` and tests.
- `SplitPrompts`: assembles ids from cached pieces. The tokenizers of every supported family
  split the text at every boundary between a value and its separator (byte-level BPE by its
  pre-tokenizer; SentencePiece because its vocabulary never merges a digit with anything), so
  the ids of ", 1008" or " <-2" never depend on their neighbours. Only the text's start is
  special (SentencePiece writes a space before it): pieces after it are tokenized as the middle
  of a text (PromptTokenizer). Tokenizing each distinct piece once makes prompt building
  thousands of times cheaper than tokenizing whole prompts and gives every prompt's exact
  length before any model work. `SplitPrompts` checks itself against the tokenizer on construction.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
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

# The only token texts that open / close a time-series span, the tokenizer's word-boundary marker
# (byte-level BPE: "Ġ", SentencePiece: "▁") read as a space: "Ġ<" / "▁<" and ">".
TS_OPEN, TS_CLOSE = " <", ">"


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
    """`DD/MM/YYYY HH:MM` from a row of table.stamps, as store_emb.py writes it (minutes 00 for the
    HOURLY_STAMP_NAMES)."""
    year, month, day, _, hour, minute = (int(field) for field in stamp)
    minutes = "00" if dataset_name in HOURLY_STAMP_NAMES else f"{minute:02d}"
    return f"{day:02d}/{month:02d}/{year:04d} {hour:02d}:{minutes}"


def value_text(value: float) -> str:
    """A value as the prompts write it: truncated toward zero, as the published code does (-2.7 -> "-2")."""
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


def time_series_flags(ids: np.ndarray, open_ids, close_ids) -> np.ndarray:
    """Spec section 3 as a vectorised flag walk: True where a token is typed time-series.

    " <" opens a span and is time-series, ">" closes it and is time-series, tokens while
    open are time-series. Other tokens that merely contain < or > (" <-", ">,") do nothing.

    Args:
        ids: (L,) int token ids of one prompt.
        open_ids, close_ids: the ids whose text is TS_OPEN / TS_CLOSE (PromptTokenizer).
    Returns:
        (L,) bool flags.
    """
    ids = np.asarray(ids)
    opens, closes = np.isin(ids, open_ids), np.isin(ids, close_ids)
    length = len(ids)
    last_event = np.where(opens | closes, np.arange(length), -1)
    np.maximum.accumulate(last_event, out=last_event)
    open_after = np.where(last_event >= 0, opens[np.maximum(last_event, 0)], False)
    open_before = np.concatenate([[False], open_after[:-1]])
    return opens | closes | open_before


def _marker(spec: dict) -> str | None:
    """The word-boundary marker of a tokenizer's JSON definition: "Ġ" (byte-level), "▁" (SentencePiece)."""
    text = json.dumps({key: spec.get(key) for key in ("normalizer", "pre_tokenizer", "decoder")})
    if '"ByteLevel"' in text:
        return "Ġ"
    if '"Metaspace"' in text or '"content": "\\u2581"' in text:
        return "▁"
    return None


def _middle(node):
    """A tokenizer definition's normalizer or pre-tokenizer without the steps that prefix a text's start
    with a space (SentencePiece's Prepend and Metaspace prepend_scheme, ByteLevel add_prefix_space)."""
    if isinstance(node, list):
        return [step for step in map(_middle, node) if step is not None]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "Prepend":
        return None
    node = {key: _middle(value) for key, value in node.items()}
    if node.get("type") == "Metaspace":
        node |= {"prepend_scheme": "never", "add_prefix_space": False}
    if node.get("type") == "ByteLevel":
        node["add_prefix_space"] = False
    return node


class PromptTokenizer:
    """What SplitPrompts needs of the model's tokenizer: the ids of texts at the start and in the
    middle of a prompt, the special tokens `tokenizer.encode` puts around every prompt, and the ids
    that open and close a time-series span. Built once per tokenizer (PromptTokenizer.of).

    Raises:
        InputError: a tokenizer that is neither byte-level BPE nor SentencePiece, or not a fast one.
    """

    _built: dict[int, tuple] = {}  # id(tokenizer) -> (tokenizer, its PromptTokenizer): the tokenizer kept alive

    def __init__(self, tokenizer):
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        spec = json.loads(backend.to_str()) if backend is not None else {}
        self.marker = _marker(spec)
        if self.marker is None:
            raise InputError(f"the tokenizer {type(tokenizer).__name__} is neither a byte-level BPE nor a "
                             "SentencePiece tokenizer (no fast tokenizer.json with either), so its token types "
                             "cannot be read; use the model's own tokenizer.json.")
        middle = copy.deepcopy(spec)
        middle["normalizer"], middle["pre_tokenizer"] = _middle(spec["normalizer"]), _middle(spec["pre_tokenizer"])
        self._start, self._middle = Tokenizer.from_str(backend.to_str()), Tokenizer.from_str(json.dumps(middle))
        for part in (self._start, self._middle):
            part.no_truncation()
            part.no_padding()
        probe = "From <1>"  # where the special tokens go: around the text's own ids
        plain, full = (tokenizer(probe, add_special_tokens=special)["input_ids"] for special in (False, True))
        start = next(k for k in range(len(full) - len(plain) + 1) if full[k:k + len(plain)] == plain)
        self.prefix = np.array(full[:start], dtype=np.int64)
        self.suffix = np.array(full[start + len(plain):], dtype=np.int64)
        texts = {token_id: token.replace(self.marker, " ") for token, token_id in tokenizer.get_vocab().items()}
        self.open_ids = np.array(sorted(token_id for token_id, text in texts.items() if text == TS_OPEN))
        self.close_ids = np.array(sorted(token_id for token_id, text in texts.items() if text == TS_CLOSE))

    @classmethod
    def of(cls, tokenizer) -> PromptTokenizer:
        """The tokenizer's PromptTokenizer, built on first use (its vocabulary scan takes a moment)."""
        if id(tokenizer) not in cls._built:
            cls._built[id(tokenizer)] = (tokenizer, cls(tokenizer))
        return cls._built[id(tokenizer)][1]

    def ids(self, texts: list[str], start: bool = False) -> list[list[int]]:
        """Each text's ids without special tokens, tokenized as the start (`start`) or the middle of a prompt."""
        backend = self._start if start else self._middle
        return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]


class _Pieces:
    """Token ids of many short texts, each distinct text tokenized once, stored flat.

    Args:
        encode: texts -> their ids (PromptTokenizer.ids).
        distinct: the distinct texts.
        which: (n,) int64, the piece at each position as an index into `distinct`.
    """

    def __init__(self, encode, distinct: list[str], which: np.ndarray):
        encoded = encode(distinct)
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
    def of_texts(cls, encode, texts: list[str]) -> _Pieces:
        """The pieces `texts`, in order."""
        index = {text: position for position, text in enumerate(dict.fromkeys(texts))}
        return cls(encode, list(index), np.fromiter((index[text] for text in texts), dtype=np.int64,
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
        self.prompt_tokenizer = pieces = PromptTokenizer.of(tokenizer)

        # The text around the values, split where the pre-tokenizer always splits.
        gt, hd = (template.replace("output_len", str(pred_len)) for template in self.pair)
        head, gt_rest = gt.split(f" <{VALUES}")    # gt_rest starts with the closing ">"
        head_a, head_b = head.split(" to <t2>")
        mid, close = gt_rest.split(f" <{FUTURE}")  # close is the final ">"
        hd_tail = hd.split(f" <{VALUES}")[1]
        stamps_text = [stamp_text(stamp, dataset_name) for stamp in stamps]
        # the prompt's start (as t1), the rest as the middle of a text (as t2)
        self._head_a = _Pieces.of_texts(functools.partial(pieces.ids, start=True),
                                        [head_a.replace("t1", stamp) for stamp in stamps_text])
        self._head_b = _Pieces.of_texts(pieces.ids, [f" to <{stamp}>{head_b}" for stamp in stamps_text])
        self._gt_mid, self._hd_tail, self._close = (np.array(ids, dtype=np.int64)
                                                    for ids in pieces.ids([mid, hd_tail, close]))
        # Per variable: each row's value as the first of a list (" <v") and as a later one (", v"),
        # from the column's distinct truncated values (value_text truncates; -0.0 and 0.0 are one).
        self._first, self._later = [], []
        for variable in range(n_vars):
            values, which = np.unique(np.trunc(raw[:, variable]), return_inverse=True)
            texts = [value_text(value) for value in values]
            self._first.append(_Pieces(pieces.ids, [" <" + text for text in texts], which.reshape(-1)))
            self._later.append(_Pieces(pieces.ids, [", " + text for text in texts], which.reshape(-1)))
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
        L, P, tok = self.seq_len, self.pred_len, self.prompt_tokenizer
        head = [tok.prefix, self._head_a.span(i, i + 1), self._head_b.span(i + L - 1, i + L)]
        gt, hd = [], []
        for variable in range(self.n_vars):
            shared = head + self._values(variable, i, L)
            hd.append(np.concatenate(shared + [self._hd_tail, tok.suffix]))
            gt.append(np.concatenate(shared + [self._gt_mid] + self._values(variable, i + L, P)
                                     + [self._close, tok.suffix]))
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
        special = len(self.prompt_tokenizer.prefix) + len(self.prompt_tokenizer.suffix)
        head = self._head_a.span_lengths(i, i + 1) + self._head_b.span_lengths(i + L - 1, i + L) + special
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
        """(L,) bool token types of one prompt's (L,) ids, True for time series (time_series_flags)."""
        return time_series_flags(ids, self.prompt_tokenizer.open_ids, self.prompt_tokenizer.close_ids)

    def _check_against_tokenizer(self) -> None:
        """Assembled ids must equal `tokenizer.encode`'s on the first and last window; else this tokenizer
        does not split prompts where the pieces end."""
        for i in sorted({0, self.n_windows - 1}) if self.n_windows else ():
            ids = self.window_ids(i)
            for variable, (gt_text, hd_text) in enumerate(self.window_texts(i)):
                want = self.tokenizer([gt_text, hd_text])["input_ids"]
                if list(ids.gt[variable]) != want[0] or list(ids.hd[variable]) != want[1]:
                    raise InputError(
                        f"the model's tokenizer ({type(self.tokenizer).__name__}) splits the prompts of window {i}, "
                        f"variable {variable} across the places where a value meets its separator, so they cannot "
                        "be built from pieces; this tokenizer is not supported: report it with the model's name.")
