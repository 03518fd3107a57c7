"""Prompts, token ids and token types, against the spec worked by hand (sections 2, 3, 7)."""

import copy

import numpy as np
import pytest

from timekd_embed.errors import InputError
from timekd_embed.prompts import (
    TEMPLATES,
    SplitPrompts,
    prompt_texts,
    stamp_text,
    template_key,
    time_series_flags,
    value_text,
)


def test_template_lookup_is_exact_with_the_published_fallback():
    assert template_key("weather") == "ETTh1"      # lower-case name is not a key
    assert template_key("Weather") == "Weather"
    assert template_key("ECL") == "ETTh1"
    assert template_key("weather", "Weather") == "Weather"
    with pytest.raises(InputError, match="dataset.template"):
        template_key("weather", "weather")
    assert TEMPLATES["Weather"][1] == ("From <t1> to <t2>, the values were <value1, ..., valuen> every 10 minutes. "
                                       "Forecast the values for the next <output_len> minutes")
    assert TEMPLATES["Exchange"][0] == ("From <t1> to <t2>, the exchange rates were <value1, ..., valuen> every day. "
                                        "The rates for the next <output_len> days are <gt1, ..., gtn>")


def test_values_truncate_toward_zero_and_stamps_follow_the_name():
    assert [value_text(v) for v in (1008.89, -2.7, 0.71, -0.3, -9999.0)] == ["1008", "-2", "0", "0", "-9999"]
    stamp = (2020, 5, 12, 1, 6, 50)
    assert stamp_text(stamp, "weather") == "12/05/2020 06:50"
    assert stamp_text(stamp, "ETTh1") == "12/05/2020 06:00"
    assert stamp_text(stamp, "ECL") == "12/05/2020 06:00"


def test_prompt_text_of_a_small_window():
    gt, hd = prompt_texts(np.array([1008.89, -2.7, 0.71]), np.array([3.5, -1.2]), "01/01/2020 00:10",
                          "01/01/2020 00:30", 2, TEMPLATES["ETTh1"])
    assert gt == ("From <01/01/2020 00:10> to <01/01/2020 00:30>, the values were <1008, -2, 0> every hour. "
                  "The values for the next <2> hours are <3, -1>")
    assert hd == ("From <01/01/2020 00:10> to <01/01/2020 00:30>, the values were <1008, -2, 0> every hour. "
                  "Forecast the values for the next <2> hours")


def test_token_types_worked_by_hand(tokenizer):
    L, T = False, True
    text = ("From <01/01/2020 00:10> to <01/01/2020 16:00>, the values were <-2, 3> every hour. "
            "The values for the next <24> hours are <-5, 1>")
    ids = tokenizer(text)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    expected = [
        ("From", L), ("Ġ<", T), ("01", T), ("/", T), ("01", T), ("/", T), ("2020", T), ("Ġ00", T), (":", T),
        ("10", T), (">", T), ("Ġto", L), ("Ġ<", T), ("01", T), ("/", T), ("01", T), ("/", T), ("2020", T),
        ("Ġ16", T), (":", T), ("00", T),
        (">,", T),                       # one token, not ">": the span stays open ...
        ("Ġthe", T), ("Ġvalues", T), ("Ġwere", T),
        ("Ġ<-", T), ("2", T), (",", T), ("Ġ3", T), (">", T),   # ... so these are typed by the open span
        ("Ġevery", L), ("Ġhour", L), (".", L), ("ĠThe", L), ("Ġvalues", L), ("Ġfor", L), ("Ġthe", L),
        ("Ġnext", L), ("Ġ<", T), ("24", T), (">", T), ("Ġhours", L), ("Ġare", L),
        ("Ġ<-", L), ("5", L), (",", L), ("Ġ1", L),   # "Ġ<-" does not open: a negative first future value
        (">", T),
    ]
    assert tokens == [t for t, _ in expected]
    flags = time_series_flags(np.array(ids), *tokenizer.convert_tokens_to_ids(["Ġ<", ">"]))
    assert flags.tolist() == [f for _, f in expected]


@pytest.mark.parametrize("name,P",
                         [("weather", 24), ("weather", 192), ("ETTh1", 36), ("Exchange", 48), ("Weather", 96)])
def test_assembled_ids_equal_the_tokenizer(train_prompts, tokenizer, name, P):
    prompts = train_prompts(P, name)
    gt_len, hd_len = prompts.lengths()
    # Window 0; one starting on the negative "Tdew" values; one holding -9999 (OT, row 7244); random others.
    windows = [0, 7244 - 100, prompts.n_windows - 1] + list(np.random.default_rng(P).integers(0, prompts.n_windows, 4))
    for i in windows:
        ids = prompts.window_ids(i)
        for c, (gt, hd) in enumerate(prompts.window_texts(i)):
            want_gt, want_hd = tokenizer([gt, hd])["input_ids"]
            assert ids.gt[c].tolist() == want_gt and ids.hd[c].tolist() == want_hd, (i, c)
            assert (gt_len[i, c], hd_len[i, c]) == (len(want_gt), len(want_hd))
    assert "-9999" in prompts.window_texts(7244 - 100)[20][0]


def test_a_tokenizer_set_to_truncate_still_gives_the_tokenizers_ids(train_split, tokenizer):
    """SplitPrompts tokenizes its pieces through the fast tokenizer's backend; a backend left set to
    truncate (8 tokens here) must not cut them: the ids stay those the tokenizer call gives."""
    _, raw, stamps = train_split
    truncating = copy.deepcopy(tokenizer)
    truncating.backend_tokenizer.enable_truncation(max_length=8)
    prompts = SplitPrompts(truncating, raw[:130], stamps[:130], "weather", 24)   # 11 windows
    gt, hd = prompts.window_texts(10)[0]
    assert prompts.window_ids(10).gt[0].tolist() == tokenizer(gt)["input_ids"]
    assert prompts.window_ids(10).hd[0].tolist() == tokenizer(hd)["input_ids"]
    assert len(tokenizer(hd)["input_ids"]) > 200


def test_prompt_lengths_match_the_spec(train_prompts):
    gt, hd = train_prompts(24).lengths([0])
    assert (gt.min(), gt.max(), hd.min(), hd.max()) == (280, 400, 232, 328)
    gt192, _ = train_prompts(192).lengths()
    assert 900 <= gt192.max() <= 1024          # spec: "about 904", inside GPT-2's context
    # P = 336 does not fit: tests/test_extract.py checks the sentence that says so.
