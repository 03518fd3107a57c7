"""Tests of the plain oracle (tests/plain_teacher.py) against hand-worked values from the spec
(docs/teacher.md), so that the oracle can be trusted when the project is
compared with it."""

from __future__ import annotations

import csv
import datetime
import functools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open

from conftest import TOKENIZER_DIR, TOKENIZERS, WEATHER_CSV, need
from plain_teacher import (
    TEMPLATES,
    PlainSCA,
    causal_plus,
    plain_last_hidden,
    plain_mask,
    plain_prompts,
    plain_teacher,
    plain_token_types,
    space_marker,
    stamp_text,
    template_pair,
)

# The shared data as conftest finds it (../shared/data beside the clone); missing in CI fails, never skips.

# Published parameter names of the SCA module (docs/teacher.md section 5), shapes for N vars, LM width d.
SCA_SHAPES = {
    "layers.0.self_attn.W_Q.weight": lambda n, f: (n, n),
    "layers.0.self_attn.W_Q.bias": lambda n, f: (n,),
    "layers.0.self_attn.W_K.weight": lambda n, f: (n, n),
    "layers.0.self_attn.W_K.bias": lambda n, f: (n,),
    "layers.0.self_attn.W_V.weight": lambda n, f: (n, n),
    "layers.0.self_attn.W_V.bias": lambda n, f: (n,),
    "layers.0.self_attn.sdp_attn.scale": lambda n, f: (),
    "layers.0.self_attn.to_out.0.weight": lambda n, f: (n, n),
    "layers.0.self_attn.to_out.0.bias": lambda n, f: (n,),
    "layers.0.norm_attn.weight": lambda n, f: (n,),
    "layers.0.norm_attn.bias": lambda n, f: (n,),
    "layers.0.ff.0.weight": lambda n, f: (f, n),
    "layers.0.ff.0.bias": lambda n, f: (f,),
    "layers.0.ff.3.weight": lambda n, f: (n, f),
    "layers.0.ff.3.bias": lambda n, f: (n,),
    "layers.0.norm_ffn.weight": lambda n, f: (n,),
    "layers.0.norm_ffn.bias": lambda n, f: (n,),
}


def published_style_sca_state(n_vars: int, d_ff: int, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under the published names (built by name, not from PlainSCA)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in SCA_SHAPES.items():
        if name.endswith("sdp_attn.scale"):
            state[name] = torch.tensor(n_vars**-0.5)
        else:
            state[name] = 0.5 * torch.randn(shape(n_vars, d_ff), generator=g)
    return state


@pytest.fixture(scope="module")
def tokenizer():
    tok = transformers.GPT2TokenizerFast.from_pretrained(str(need(TOKENIZER_DIR)))
    assert tok.encode("Hello world") == [15496, 995]
    return tok


@pytest.fixture(scope="module")
def small_model():
    # Small random GPT-2 (real vocab and context) so real token ids work and tests are fast.
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50257, n_positions=1024)
    torch.manual_seed(1234)
    model = transformers.GPT2Model._from_config(cfg, attn_implementation="eager")
    return model.float().eval()


# ------------------------------------------------------------------ templates and stamps


def test_templates_and_fallback():
    assert set(TEMPLATES) == {"ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather", "Exchange"}
    assert TEMPLATES["ETTh1"] == (
        "From <t1> to <t2>, the values were <value1, ..., valuen> every hour. "
        "The values for the next <output_len> hours are <gt1, ..., gtn>",
        "From <t1> to <t2>, the values were <value1, ..., valuen> every hour. "
        "Forecast the values for the next <output_len> hours",
    )
    assert TEMPLATES["ETTh2"] == TEMPLATES["ETTh1"]
    assert TEMPLATES["ETTm2"] == TEMPLATES["ETTm1"]
    assert "every 15 minutes. The values for the next <output_len> minutes are" in TEMPLATES["ETTm1"][0]
    # exact, case-sensitive lookup: "weather" (the name the published run uses) falls back
    assert template_pair("Weather") == TEMPLATES["Weather"]
    assert template_pair("weather") == TEMPLATES["ETTh1"]
    assert template_pair("ECL") == TEMPLATES["ETTh1"]
    assert template_pair("exchange") == TEMPLATES["ETTh1"]


def test_stamp_text():
    row = (2019, 12, 31, 1, 23, 50)  # year, month, day, weekday, hour, minute
    assert stamp_text(row, "weather") == "31/12/2019 23:50"
    assert stamp_text(row, "Weather") == "31/12/2019 23:50"
    assert stamp_text(row, "ETTm1") == "31/12/2019 23:50"
    for name in ("ETTh1", "ETTh2", "ECL"):
        assert stamp_text(row, name) == "31/12/2019 23:00"
    assert stamp_text(np.array([2020, 1, 2, 3, 4, 5]), "weather") == "02/01/2020 04:05"


# ------------------------------------------------------------------ prompts

# 3 input rows, 2 future rows, 2 variables.  Truncation toward zero:
# 1008.89 -> 1008, -2.7 -> -2, 0.71 -> 0, 11.99 -> 11, -0.3 -> 0 (not "-0").
TINY_X = np.array([[1008.89, -2.7], [1008.76, 0.71], [1009.02, 11.99]])
TINY_Y = np.array([[1007.5, -0.3], [1010.0, 5.0]])
TINY_STAMPS = np.array([(2019, 12, 31, 1, 23, 50), (2020, 1, 1, 2, 0, 0), (2020, 1, 1, 2, 0, 10)])


def test_prompts_weather_lowercase_uses_etth1_text_with_minutes():
    assert plain_prompts(TINY_X, TINY_Y, TINY_STAMPS, 2, "weather") == [
        (
            "From <31/12/2019 23:50> to <01/01/2020 00:10>, the values were <1008, 1008, 1009> every hour. "
            "The values for the next <2> hours are <1007, 1010>",
            "From <31/12/2019 23:50> to <01/01/2020 00:10>, the values were <1008, 1008, 1009> every hour. "
            "Forecast the values for the next <2> hours",
        ),
        (
            "From <31/12/2019 23:50> to <01/01/2020 00:10>, the values were <-2, 0, 11> every hour. "
            "The values for the next <2> hours are <0, 5>",
            "From <31/12/2019 23:50> to <01/01/2020 00:10>, the values were <-2, 0, 11> every hour. "
            "Forecast the values for the next <2> hours",
        ),
    ]


def test_prompts_etth1_hourly_stamps():
    assert plain_prompts(TINY_X, TINY_Y, TINY_STAMPS, 2, "ETTh1") == [
        (
            "From <31/12/2019 23:00> to <01/01/2020 00:00>, the values were <1008, 1008, 1009> every hour. "
            "The values for the next <2> hours are <1007, 1010>",
            "From <31/12/2019 23:00> to <01/01/2020 00:00>, the values were <1008, 1008, 1009> every hour. "
            "Forecast the values for the next <2> hours",
        ),
        (
            "From <31/12/2019 23:00> to <01/01/2020 00:00>, the values were <-2, 0, 11> every hour. "
            "The values for the next <2> hours are <0, 5>",
            "From <31/12/2019 23:00> to <01/01/2020 00:00>, the values were <-2, 0, 11> every hour. "
            "Forecast the values for the next <2> hours",
        ),
    ]


@pytest.mark.parametrize("name, variable, expected", [
    ("Weather", 1, ("From <31/12/2019 23:50> to <01/01/2020 00:10>, the values were <-2, 0, 11> every 10 minutes. "
                    "The values for the next <2> minutes are <0, 5>",
                    "From <31/12/2019 23:50> to <01/01/2020 00:10>, the values were <-2, 0, 11> every 10 minutes. "
                    "Forecast the values for the next <2> minutes")),
    ("Exchange", 0, ("From <31/12/2019 23:50> to <01/01/2020 00:10>, the exchange rates were <1008, 1008, 1009> "
                     "every day. The rates for the next <2> days are <1007, 1010>",
                     "From <31/12/2019 23:50> to <01/01/2020 00:10>, the exchange rates were <1008, 1008, 1009> "
                     "every day. Forecast the rates for the next <2> days")),
])
def test_prompts_weather_capitalised_and_exchange(name, variable, expected):
    assert plain_prompts(TINY_X, TINY_Y, TINY_STAMPS, 2, name)[variable] == expected


def _weather_head(n_rows: int):
    """First n_rows of weather.csv: raw (n_rows, 21) float64, stamps (n_rows, 6)."""
    need(WEATHER_CSV)
    rows = []
    with open(WEATHER_CSV, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        for row in reader:
            rows.append(row)
            if len(rows) == n_rows:
                break
    assert header[0] == "date" and header[-1] == "OT" and len(header) == 22
    stamps = []
    for row in rows:
        t = datetime.datetime.fromisoformat(row[0])
        stamps.append((t.year, t.month, t.day, t.weekday(), t.hour, t.minute))
    raw = np.array([[float(v) for v in row[1:]] for row in rows], dtype=np.float64)
    return raw, np.array(stamps)


def test_prompts_real_weather_window0_lengths(tokenizer):
    # Spec section 7: window 0 of train, P = 24: GT 280-400 tokens, HD 232-328 tokens.
    raw, stamps = _weather_head(96 + 24)
    prompts = plain_prompts(raw[:96], raw[96:], stamps[:96], 24, "weather")
    assert len(prompts) == 21
    gt0, hd0 = prompts[0]
    assert gt0.startswith("From <01/01/2020 00:10> to <01/01/2020 16:00>, the values were <1008, 1008, ")
    assert hd0.endswith("> every hour. Forecast the values for the next <24> hours")
    gt_lens = [len(tokenizer.encode(gt)) for gt, _ in prompts]
    hd_lens = [len(tokenizer.encode(hd)) for _, hd in prompts]
    assert (min(gt_lens), max(gt_lens)) == (280, 400)
    assert (min(hd_lens), max(hd_lens)) == (232, 328)


# ------------------------------------------------------------------ token types

T, L = "time_series", "language"

# GT prompt whose first input value AND first future value are negative; written out by hand.
NEG_GT = (
    "From <01/01/2020 00:10> to <01/01/2020 00:40>, the values were <-2, 0, 3> every hour. "
    "The values for the next <2> hours are <-5, 1>"
)
NEG_GT_TOKENS = [
    ("From", L),
    ("Ġ<", T),  # opens
    ("01", T), ("/", T), ("01", T), ("/", T), ("2020", T), ("Ġ00", T), (":", T), ("10", T),
    (">", T),  # closes
    ("Ġto", L),
    ("Ġ<", T),  # opens
    ("01", T), ("/", T), ("01", T), ("/", T), ("2020", T), ("Ġ00", T), (":", T), ("40", T),
    (">,", T),  # one token, NOT ">": the span stays open ...
    ("Ġthe", T), ("Ġvalues", T), ("Ġwere", T),  # ... so this language is typed time_series
    ("Ġ<-", T),  # does not open anything, but the span is still open from t2
    ("2", T), (",", T), ("Ġ0", T), (",", T), ("Ġ3", T),
    (">", T),  # closes
    ("Ġevery", L), ("Ġhour", L), (".", L), ("ĠThe", L), ("Ġvalues", L), ("Ġfor", L),
    ("Ġthe", L), ("Ġnext", L),
    ("Ġ<", T), ("2", T), (">", T),
    ("Ġhours", L), ("Ġare", L),
    ("Ġ<-", L),  # negative first future value: this span is never opened
    ("5", L), (",", L), ("Ġ1", L),
    (">", T),  # a lone ">" is always time_series
]

NEG_HD = (
    "From <01/01/2020 00:10> to <01/01/2020 00:40>, the values were <-2, 0, 3> every hour. "
    "Forecast the values for the next <2> hours"
)
NEG_HD_TOKENS = NEG_GT_TOKENS[:35] + [
    ("ĠFore", L), ("cast", L), ("Ġthe", L), ("Ġvalues", L), ("Ġfor", L), ("Ġthe", L), ("Ġnext", L),
    ("Ġ<", T), ("2", T), (">", T),
    ("Ġhours", L),
]

# Same prompt with a positive first future value: "Ġ<" opens the future span.
POS_GT = (
    "From <01/01/2020 00:10> to <01/01/2020 00:40>, the values were <-2, 0, 3> every hour. "
    "The values for the next <2> hours are <5, -1>"
)
POS_GT_TOKENS = NEG_GT_TOKENS[:45] + [
    ("Ġ<", T), ("5", T), (",", T), ("Ġ-", T), ("1", T), (">", T),
]


@pytest.mark.parametrize(
    "text, expected",
    [(NEG_GT, NEG_GT_TOKENS), (NEG_HD, NEG_HD_TOKENS), (POS_GT, POS_GT_TOKENS)],
    ids=["gt-negative-future", "hd", "gt-positive-future"],
)
def test_token_types_real_tokenizer(tokenizer, text, expected):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode(text))
    assert tokens == [tok for tok, _ in expected]
    assert plain_token_types(tokens) == [typ for _, typ in expected]


def test_token_types_prompts_built_by_plain_prompts(tokenizer):
    # The hand-written NEG_GT / NEG_HD are exactly what plain_prompts builds from such data.
    x = np.array([[-2.5], [0.4], [3.9]])
    y = np.array([[-5.1], [1.2]])
    stamps = np.array([(2020, 1, 1, 2, 0, 10), (2020, 1, 1, 2, 0, 20), (2020, 1, 1, 2, 0, 40)])
    assert plain_prompts(x, y, stamps, 2, "weather") == [(NEG_GT, NEG_HD)]


def test_token_types_synthetic_walk():
    # "Ġ<-" never opens, ">," never closes, a lone ">" closes and is itself time_series.
    assert plain_token_types(["a", "Ġ<-", "2", ">", "b"]) == [L, L, L, T, L]
    assert plain_token_types(["Ġ<", "1", ">,", "x", ">", "y"]) == [T, T, T, T, T, L]
    assert plain_token_types(["<", "1", ">", ">"]) == [L, L, T, T]
    assert plain_token_types([]) == []


# ------------------------------------------------------------------ mask


def test_mask_five_tokens_by_hand():
    m = -100.0
    types = [L, T, T, L, T]  # language {0, 3}, time series {1, 2, 4}
    expected = torch.tensor(
        [
            [0, m, m, 0, m],
            [m, 0, 0, m, 0],
            [m, 0, 0, m, 0],
            [0, m, m, 0, m],
            [m, 0, 0, m, 0],
        ],
        dtype=torch.float32,
    )
    got = plain_mask(types, 5)
    assert got.dtype == torch.float32 and got.shape == (5, 5)
    assert torch.equal(got, expected)


def test_mask_truncation_both_ways():
    m = -100.0
    types = [L, T, T, L, T]
    # types longer than the prompt: only indices < length count
    assert torch.equal(plain_mask(types, 3), torch.tensor([[0, m, m], [m, 0, 0], [m, 0, 0]]))
    # types shorter than the prompt: uncovered positions 3, 4 get nothing
    expected = torch.zeros(5, 5)
    expected[0, 1] = expected[1, 0] = m
    assert torch.equal(plain_mask([L, T], 5), expected)
    assert torch.equal(plain_mask([T, T, T], 3), torch.zeros(3, 3))


# ------------------------------------------------------------------ GPT-2 block math


def test_last_hidden_matches_transformers_without_calibration(tokenizer, small_model):
    ids = tokenizer.encode(NEG_GT)
    with torch.inference_mode():
        ours = plain_last_hidden(small_model, ids, torch.zeros(len(ids), len(ids)))  # (d,)
        ref = small_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]  # (d,)
    assert ours.shape == (64,)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_last_hidden_calibrated_matches_transformers_4d_mask(tokenizer, small_model):
    # Cross-check of "causal first, then + calibrated mask": the model's eager path accepts an
    # additive 4-D mask; give it finfo.min above the diagonal plus the calibration.
    ids = tokenizer.encode(NEG_GT)
    n = len(ids)
    calib = plain_mask(plain_token_types(tokenizer.convert_ids_to_tokens(ids)), n)
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    mask4d = (torch.where(future, torch.finfo(torch.float32).min, 0.0) + calib)[None, None]
    with torch.inference_mode():
        ours = plain_last_hidden(small_model, ids, calib)
        ref = small_model(input_ids=torch.tensor([ids]), attention_mask=mask4d).last_hidden_state[0, -1]
        plain = plain_last_hidden(small_model, ids, torch.zeros(n, n))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert (ours - plain).abs().max() > 1e-3  # the calibration really changes the result


def test_last_hidden_ignores_mask_above_diagonal(small_model):
    # Entries for future keys are already at finfo.min; adding -100 there changes nothing.
    ids = [15496, 995, 11, 50, 1000, 7]
    upper = torch.full((6, 6), -100.0).triu(1)
    with torch.inference_mode():
        a = plain_last_hidden(small_model, ids, torch.zeros(6, 6))
        b = plain_last_hidden(small_model, ids, upper)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


# ------------------------------------------------------------------ SCA


def test_sca_state_dict_names_match_published():
    assert set(PlainSCA(3, 16).state_dict()) == set(SCA_SHAPES)
    sca = PlainSCA(3, 16)
    sca.load_state_dict(published_style_sca_state(3, 16, seed=0), strict=True)


def _ln(x, w, b, eps=1e-5):
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)  # biased, as LayerNorm
    return (x - mu) / torch.sqrt(var + eps) * w + b


def test_sca_forward_by_hand():
    n_vars, d, d_ff = 3, 4, 16  # N variables, d positions (LM width), d_ff = 4*d
    s = published_style_sca_state(n_vars, d_ff, seed=7)
    sca = PlainSCA.from_state_dict(s)
    g = torch.Generator().manual_seed(3)
    gt = torch.randn(d, n_vars, generator=g)  # (d, N)
    hd = torch.randn(d, n_vars, generator=g)  # (d, N)

    p = "layers.0."
    qn = _ln(gt, s[p + "norm_attn.weight"], s[p + "norm_attn.bias"])
    kn = _ln(hd, s[p + "norm_attn.weight"], s[p + "norm_attn.bias"])
    vn = kn
    Q = qn @ s[p + "self_attn.W_Q.weight"].T + s[p + "self_attn.W_Q.bias"]
    K = kn @ s[p + "self_attn.W_K.weight"].T + s[p + "self_attn.W_K.bias"]
    V = vn @ s[p + "self_attn.W_V.weight"].T + s[p + "self_attn.W_V.bias"]
    scores = Q @ K.T / math.sqrt(n_vars)  # (d, d)
    e = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
    probs = e / e.sum(dim=1, keepdim=True)
    att = (probs @ V) @ s[p + "self_attn.to_out.0.weight"].T + s[p + "self_attn.to_out.0.bias"]
    x = _ln(qn - att, s[p + "norm_ffn.weight"], s[p + "norm_ffn.bias"])
    hid = x @ s[p + "ff.0.weight"].T + s[p + "ff.0.bias"]  # (d, d_ff)
    hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))  # exact GELU
    expected = x + hid @ s[p + "ff.3.weight"].T + s[p + "ff.3.bias"]  # (d, N)

    with torch.inference_mode():
        got = sca(gt, hd, hd)
    assert got.shape == (d, n_vars)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_sca_uses_stored_scale():
    s = published_style_sca_state(3, 16, seed=1)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = PlainSCA.from_state_dict(s)(x, x, x)
        s2 = dict(s, **{"layers.0.self_attn.sdp_attn.scale": torch.tensor(5.0)})
        b = PlainSCA.from_state_dict(s2)(x, x, x)
    assert not torch.allclose(a, b)


# ------------------------------------------------------------------ whole teacher


def _synthetic_split(n_rows: int, seed: int = 0):
    """(n_rows, 3) raw values: pressure-like, temperature around 0 (negatives), small counts."""
    rng = np.random.default_rng(seed)
    raw = np.stack(
        [
            1000 + 10 * rng.random(n_rows),
            rng.normal(0, 3, n_rows),
            rng.integers(0, 40, n_rows).astype(np.float64),
        ],
        axis=1,
    )
    base = datetime.datetime(2020, 1, 1, 0, 10)
    stamps = []
    for r in range(n_rows):
        t = base + datetime.timedelta(minutes=10 * r)
        stamps.append((t.year, t.month, t.day, t.weekday(), t.hour, t.minute))
    return raw, np.array(stamps)


def test_teacher_reference_wiring(tokenizer, small_model):
    # One window assembled by hand from the oracle's pieces, with the published defect:
    # every prompt's mask from variable N-1's token types, truncated / padded to its length.
    P = 4
    raw, stamps = _synthetic_split(96 + P + 1)
    n_vars, d = raw.shape[1], 64
    sca_state = published_style_sca_state(n_vars, 4 * d, seed=5)

    prompts = plain_prompts(raw[1:97], raw[97 : 97 + P], stamps[1:97], P, "weather")
    gt_ids = [tokenizer.encode(gt) for gt, _ in prompts]
    hd_ids = [tokenizer.encode(hd) for _, hd in prompts]
    assert len({len(i) for i in gt_ids}) > 1  # lengths differ, so truncation matters
    last_gt = plain_token_types(tokenizer.convert_ids_to_tokens(gt_ids[-1]))
    last_hd = plain_token_types(tokenizer.convert_ids_to_tokens(hd_ids[-1]))
    with torch.inference_mode():
        gt_last = torch.stack(
            [plain_last_hidden(small_model, ids, plain_mask(last_gt, len(ids))) for ids in gt_ids], dim=1
        )  # (d, N)
        hd_last = torch.stack(
            [plain_last_hidden(small_model, ids, plain_mask(last_hd, len(ids))) for ids in hd_ids], dim=1
        )  # (d, N)
        expected = PlainSCA.from_state_dict(sca_state)(gt_last, hd_last, hd_last).T.numpy()  # (N, d)

    got = plain_teacher(raw, stamps, [0, 1], P, "weather", tokenizer, small_model, sca_state)
    assert got.shape == (2, n_vars, d) and got.dtype == np.float32
    np.testing.assert_allclose(got[1], expected, atol=1e-6, rtol=0)

    corrected = plain_teacher(raw, stamps, [1], P, "weather", tokenizer, small_model, sca_state, "corrected")
    assert np.abs(corrected[0] - got[1]).max() > 1e-4  # the defect is visible

    # window i is rows i.. of the split: starting the split one row later shifts the index
    shifted = plain_teacher(raw[1:], stamps[1:], [0], P, "weather", tokenizer, small_model, sca_state)
    np.testing.assert_allclose(shifted[0], got[1], atol=0, rtol=0)


def test_teacher_fidelities_agree_when_prompts_share_types(tokenizer, small_model):
    # Identical columns -> identical prompts -> the defect cannot show.
    P = 2
    raw, stamps = _synthetic_split(96 + P)
    raw = np.repeat(raw[:, :1], 2, axis=1)  # (98, 2)
    sca_state = published_style_sca_state(2, 4 * 64, seed=2)
    ref = plain_teacher(raw, stamps, [0], P, "Weather", tokenizer, small_model, sca_state, "reference")
    cor = plain_teacher(raw, stamps, [0], P, "Weather", tokenizer, small_model, sca_state, "corrected")
    np.testing.assert_array_equal(ref, cor)


def test_teacher_rejects_bad_arguments(tokenizer, small_model):
    raw, stamps = _synthetic_split(96 + 2)
    sca_state = published_style_sca_state(3, 4 * 64, seed=0)
    with pytest.raises(IndexError):
        plain_teacher(raw, stamps, [1], 2, "weather", tokenizer, small_model, sca_state)
    with pytest.raises(ValueError):
        plain_teacher(raw, stamps, [0], 2, "weather", tokenizer, small_model, sca_state, "fast")


# ================================================================== other teacher families
# Llama 2/3, Mistral, Qwen2/Qwen2.5 and Phi-3: the real tokenizers in ../shared/data/tokenizers and
# tiny random models built by conftest.make_family_model_dir.


@functools.cache
def family_tokenizer(name: str):
    """The real tokenizer `name` (gpt2, qwen2, llama3 or phi3), as AutoTokenizer loads it."""
    if name == "gpt2":  # vocab.json and merges.txt only, as the workflow has always read them
        return transformers.GPT2TokenizerFast.from_pretrained(str(need(TOKENIZER_DIR)))
    return transformers.AutoTokenizer.from_pretrained(str(need(TOKENIZERS / name)))


@pytest.mark.parametrize("name, marker", [("gpt2", "Ġ"), ("qwen2", "Ġ"), ("llama3", "Ġ"), ("phi3", "▁")])
def test_space_marker_byte_level_or_sentencepiece(name, marker):
    assert space_marker(family_tokenizer(name)) == marker


@pytest.mark.parametrize("name, added", [("gpt2", []), ("qwen2", []), ("llama3", []), ("phi3", ["<s>"])])
def test_special_tokens_each_tokenizer_adds_by_default(name, added):
    # These converted tokenizers: only phi3 adds its BOS (the hub's Llama 3 adds <|begin_of_text|>).
    tok = family_tokenizer(name)
    plain = tok.encode(NEG_GT, add_special_tokens=False)
    default = tok.encode(NEG_GT)
    assert tok.convert_ids_to_tokens(default[: len(added)]) == added
    assert default[len(added) :] == plain


def test_token_types_sentencepiece_walk():
    # With "▁" the opener is "▁<"; "Ġ<" is then an ordinary token, and <s> is language.
    tokens = ["<s>", "▁From", "▁<", "1", ">,", "x", ">", "▁<-", "2", ">", "Ġ<", "3"]
    assert plain_token_types(tokens, "▁") == [L, L, T, T, T, T, T, L, L, T, L, L]


def typed(kind, *tokens):
    return [(tok, kind) for tok in tokens]


# Window 0 of the weather train split, P = 24, variable 3 (Tdew, first value -1.33): the GT prompt
# "From <01/01/2020 00:10> to <01/01/2020 16:00>, the values were <-1, -1, ..., 0, -1> every hour.
# The values for the next <24> hours are <-1, -1, ..., -2>".  Per tokenizer, written out by hand:
# its first tokens, the stretch from the end of the input values into the future values, and the
# last tokens.
TDEW_GT = {
    "qwen2": (  # byte-level BPE, one digit a token, nothing added
        typed(L, "From") + typed(T, "Ġ<", "0", "1", "/", "0", "1", "/", "2", "0", "2", "0", "Ġ", "0", "0",
                                 ":", "1", "0", ">")
        + typed(L, "Ġto")
        + typed(T, "Ġ<", "0", "1", "/", "0", "1", "/", "2", "0", "2", "0", "Ġ", "1", "6", ":", "0", "0",
                ">,",  # does not close: ", the values were" stays time series
                "Ġthe", "Ġvalues", "Ġwere", "Ġ<-", "1", ",", "Ġ-", "1"),
        typed(T, "0", ",", "Ġ-", "1", ">")
        + typed(L, "Ġevery", "Ġhour", ".", "ĠThe", "Ġvalues", "Ġfor", "Ġthe", "Ġnext")
        + typed(T, "Ġ<", "2", "4", ">")
        + typed(L, "Ġhours", "Ġare", "Ġ<-", "1", ",", "Ġ-", "1"),  # "Ġ<-" opens nothing
        typed(L, ",", "Ġ-", "2") + typed(T, ">"),
    ),
    "llama3": (  # byte-level BPE, up to three digits a token, nothing added (these files)
        typed(L, "From") + typed(T, "Ġ<", "01", "/", "01", "/", "202", "0", "Ġ", "00", ":", "10", ">")
        + typed(L, "Ġto")
        + typed(T, "Ġ<", "01", "/", "01", "/", "202", "0", "Ġ", "16", ":", "00", ">,",
                "Ġthe", "Ġvalues", "Ġwere", "Ġ<-", "1", ",", "Ġ-", "1"),
        typed(T, "0", ",", "Ġ-", "1", ">")
        + typed(L, "Ġevery", "Ġhour", ".", "ĠThe", "Ġvalues", "Ġfor", "Ġthe", "Ġnext")
        + typed(T, "Ġ<", "24", ">")
        + typed(L, "Ġhours", "Ġare", "Ġ<-", "1", ",", "Ġ-", "1"),
        typed(L, ",", "Ġ-", "2") + typed(T, ">"),
    ),
    "phi3": (  # SentencePiece, "▁" for a space (also before the first word), one digit a token, <s>
        typed(L, "<s>", "▁From")
        + typed(T, "▁<", "0", "1", "/", "0", "1", "/", "2", "0", "2", "0", "▁", "0", "0", ":", "1", "0", ">")
        + typed(L, "▁to")
        + typed(T, "▁<", "0", "1", "/", "0", "1", "/", "2", "0", "2", "0", "▁", "1", "6", ":", "0", "0", ">,",
                "▁the", "▁values", "▁were", "▁<-", "1", ",", "▁-", "1"),
        typed(T, "0", ",", "▁-", "1", ">")
        + typed(L, "▁every", "▁hour", ".", "▁The", "▁values", "▁for", "▁the", "▁next")
        + typed(T, "▁<", "2", "4", ">")
        + typed(L, "▁hours", "▁are", "▁<-", "1", ",", "▁-", "1"),
        typed(L, ",", "▁-", "2") + typed(T, ">"),
    ),
}


@pytest.mark.parametrize("name", sorted(TDEW_GT))
def test_token_types_of_a_real_weather_prompt_per_tokenizer(name):
    raw, stamps = _weather_head(96 + 24)
    gt = plain_prompts(raw[:96], raw[96:], stamps[:96], 24, "weather")[3][0]
    assert gt.startswith("From <01/01/2020 00:10> to <01/01/2020 16:00>, the values were <-1, -1, ")
    assert "0, -1> every hour. The values for the next <24> hours are <-1, -1, " in gt
    tok = family_tokenizer(name)
    tokens = tok.convert_ids_to_tokens(tok.encode(gt))
    types = plain_token_types(tokens, space_marker(tok))
    got = list(zip(tokens, types))
    head, middle, tail = TDEW_GT[name]
    assert got[: len(head)] == head
    every = tokens.index(middle[5][0])  # the first " every": the input values end 5 tokens before
    assert got[every - 5 : every - 5 + len(middle)] == middle
    assert got[-len(tail) :] == tail


# ------------------------------------------------------------------ tiny models of each family


def load_family(folder):
    """The checkpoint as users have it (*ForCausalLM), eager attention, float32, eval."""
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").float().eval()


@pytest.fixture(scope="module")
def family_models(family_model_dir):
    """family -> (folder, *ForCausalLM model, its tokenizer loaded from the folder)."""
    folders = {family: family_model_dir(family) for family in ROTARY_FAMILIES}
    return {family: (folder, load_family(folder), transformers.AutoTokenizer.from_pretrained(str(folder)))
            for family, folder in folders.items()}


ROTARY_FAMILIES = ["qwen2", "llama", "mistral", "phi3"]


# vocabulary sizes: ../shared/data/tokenizers/README.md (llama3: 128,256 plus an <|endoftext|>)
@pytest.mark.parametrize("family, architecture, tokenizer_name, vocab, tied", [
    ("qwen2", "Qwen2ForCausalLM", "qwen2", 151936, True),
    ("llama", "LlamaForCausalLM", "llama3", 128257, True),
    ("mistral", "MistralForCausalLM", "phi3", 32064, False),
    ("phi3", "Phi3ForCausalLM", "phi3", 32064, False),
])
def test_family_model_folders_are_laid_out_as_on_the_hub(family_models, family, architecture, tokenizer_name,
                                                          vocab, tied):
    folder, model, tok = family_models[family]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [architecture] and config["tie_word_embeddings"] is tied
    assert config["vocab_size"] == len(tok) == vocab
    assert (folder / "tokenizer.json").read_bytes() == (TOKENIZERS / tokenizer_name / "tokenizer.json").read_bytes()
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (64, 4, 2)
    assert config["max_position_embeddings"] == 2048
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "model.layers.1.input_layernorm.weight" in keys
    assert ("lm_head.weight" in keys) is not tied


@pytest.mark.parametrize("family", ROTARY_FAMILIES)
def test_a_4d_float_mask_is_used_as_given(family_models, family):
    # transformers 5.24 takes a 4D float mask as the additive mask itself: a causal-only one equals
    # no mask (its own causal mask), one without the causal part lets position 0 see the future.
    _, model, tok = family_models[family]
    ids = torch.tensor([tok.encode(NEG_GT)])
    n = ids.shape[1]
    with torch.inference_mode():
        own = model.model(input_ids=ids, use_cache=False).last_hidden_state[0]  # (n, d)
        causal = model.model(input_ids=ids, attention_mask=causal_plus(torch.zeros(n, n)),
                             use_cache=False).last_hidden_state[0]
        nothing = model.model(input_ids=ids, attention_mask=torch.zeros(1, 1, n, n),
                              use_cache=False).last_hidden_state[0]
    torch.testing.assert_close(causal, own, atol=1e-6, rtol=0)
    assert (nothing[0] - own[0]).abs().max() > 1e-2


@pytest.mark.parametrize("family", ROTARY_FAMILIES)
def test_the_calibration_changes_the_state_and_only_below_the_diagonal(family_models, family):
    _, model, tok = family_models[family]
    ids = tok.encode(NEG_GT)
    n = len(ids)
    calib = plain_mask(plain_token_types(tok.convert_ids_to_tokens(ids), space_marker(tok)), n)
    with torch.inference_mode():
        plain = plain_last_hidden(model, ids, torch.zeros(n, n))
        calibrated = plain_last_hidden(model, ids, calib)
        above = plain_last_hidden(model, ids, torch.full((n, n), -100.0).triu(1))
        decoder_only = plain_last_hidden(model.model, ids, calib)  # the *Model class alone
    assert plain.shape == (64,)
    assert (calibrated - plain).abs().max() > 1e-2
    torch.testing.assert_close(above, plain, atol=0, rtol=0)
    torch.testing.assert_close(decoder_only, calibrated, atol=0, rtol=0)


def test_rotary_oracle_refuses_prompts_beyond_the_window_or_the_context(family_model_dir):
    model = load_family(family_model_dir("mistral"))
    model.config.sliding_window = 8  # a given 4D mask would silently drop the sliding window
    with pytest.raises(ValueError, match="sliding window 8"):
        plain_last_hidden(model, list(range(9)), torch.zeros(9, 9))
    plain_last_hidden(model, list(range(8)), torch.zeros(8, 8))
    model.config.sliding_window = None
    with pytest.raises(ValueError, match="context 2048"):
        plain_last_hidden(model, [5] * 2049, torch.zeros(2049, 2049))
    with pytest.raises(TypeError, match="BertModel"):
        plain_last_hidden(transformers.BertModel(transformers.BertConfig(hidden_size=8, num_hidden_layers=1,
                                                                         num_attention_heads=2,
                                                                         intermediate_size=8)), [1], torch.zeros(1, 1))


# ------------------------------------------------------------------ one Llama written out by hand


def _rms_norm(h, weight, eps):
    return h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def _rotate(x, theta):
    """Rotary position embedding of x (heads, L, d_head) at positions 0..L-1: dims i and
    i + d_head/2 turn as a pair by the angle position * theta^(-2i / d_head)."""
    _, n, d_head = x.shape
    inv_freq = 1.0 / theta ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)  # (d_head/2,)
    angle = torch.arange(n, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (L, d_head/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., : d_head // 2], x[..., d_head // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def hand_llama_last_hidden(model, ids, mask):
    """(d,) LlamaModel's state after the final norm at the last token, from its weights."""
    cfg = model.config
    assert not cfg.attention_bias and not cfg.mlp_bias and cfg.hidden_act == "silu"
    assert cfg.rope_parameters["rope_type"] == "default"
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d_head = cfg.hidden_size // n_head
    theta, eps = cfg.rope_parameters["rope_theta"], cfg.rms_norm_eps
    n = len(ids)
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    h = model.embed_tokens.weight[ids]  # (L, d)
    for layer in model.layers:
        att, mlp = layer.self_attn, layer.mlp
        a = _rms_norm(h, layer.input_layernorm.weight, eps)
        q = (a @ att.q_proj.weight.T).view(n, n_head, d_head).transpose(0, 1)  # (heads, L, d_head)
        k = (a @ att.k_proj.weight.T).view(n, n_kv, d_head).transpose(0, 1)  # (kv heads, L, d_head)
        v = (a @ att.v_proj.weight.T).view(n, n_kv, d_head).transpose(0, 1)
        q, k = _rotate(q, theta), _rotate(k, theta)
        heads = []
        for head in range(n_head):
            kv = head // (n_head // n_kv)  # consecutive query heads share one key/value head
            scores = q[head] @ k[kv].T / math.sqrt(d_head)  # (L, L)
            scores = torch.where(future, torch.finfo(torch.float32).min, scores) + mask
            heads.append(torch.softmax(scores, dim=-1) @ v[kv])  # (L, d_head)
        h = h + torch.cat(heads, dim=1) @ att.o_proj.weight.T
        m = _rms_norm(h, layer.post_attention_layernorm.weight, eps)
        h = h + (F.silu(m @ mlp.gate_proj.weight.T) * (m @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    return _rms_norm(h, model.norm.weight, eps)[-1]


def test_llama_by_hand_equals_the_llama_model_route(family_models):
    folder, _, tok = family_models["llama"]
    model = load_family(folder).model  # LlamaModel, a copy of its own: its layers are cut below
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.rope_parameters["rope_theta"]) == (4, 2, 500000.0)
    ids = tok.encode(NEG_GT)
    calib = plain_mask(plain_token_types(tok.convert_ids_to_tokens(ids), "Ġ"), len(ids))
    with torch.inference_mode():
        by_hand = hand_llama_last_hidden(model, ids, calib)
        route = plain_last_hidden(model, ids, calib)
        torch.testing.assert_close(route, by_hand, atol=1e-5, rtol=0)
        # model.layers: 1 -- the first decoder layer, then the final norm
        model.layers = model.layers[:1]
        model.config.num_hidden_layers = 1
        first = plain_last_hidden(model, ids, calib)
        torch.testing.assert_close(first, hand_llama_last_hidden(model, ids, calib), atol=1e-5, rtol=0)
    assert (first - route).abs().max() > 1e-2


# ------------------------------------------------------------------ whole teacher, other families


@pytest.mark.parametrize("family", ROTARY_FAMILIES)
def test_teacher_wiring_other_families(family_models, family):
    # As test_teacher_reference_wiring: the tokenizer's own ids (phi3: with <s>), its space marker,
    # the model's hidden size for d.
    _, model, tok = family_models[family]
    P = 2
    raw, stamps = _synthetic_split(96 + P)
    n_vars, d = raw.shape[1], 64
    sca_state = published_style_sca_state(n_vars, 4 * d, seed=3)
    prompts = plain_prompts(raw[:96], raw[96:], stamps[:96], P, "weather")
    space = "▁" if family in ("mistral", "phi3") else "Ġ"
    gt_ids = [tok.encode(gt) for gt, _ in prompts]
    hd_ids = [tok.encode(hd) for _, hd in prompts]
    assert (gt_ids[0][0] == 1) is (family in ("mistral", "phi3"))  # <s> is id 1 in the phi3 vocabulary
    last_gt = plain_token_types(tok.convert_ids_to_tokens(gt_ids[-1]), space)
    last_hd = plain_token_types(tok.convert_ids_to_tokens(hd_ids[-1]), space)
    with torch.inference_mode():
        gt_last = torch.stack([plain_last_hidden(model, i, plain_mask(last_gt, len(i))) for i in gt_ids], dim=1)
        hd_last = torch.stack([plain_last_hidden(model, i, plain_mask(last_hd, len(i))) for i in hd_ids], dim=1)
        expected = PlainSCA.from_state_dict(sca_state)(gt_last, hd_last, hd_last).T.numpy()  # (N, d)
    got = plain_teacher(raw, stamps, [0], P, "weather", tok, model, sca_state)
    assert got.shape == (1, n_vars, d)
    np.testing.assert_allclose(got[0], expected, atol=1e-6, rtol=0)
    corrected = plain_teacher(raw, stamps, [0], P, "weather", tok, model, sca_state, "corrected")
    assert np.abs(corrected - got).max() > 1e-4
