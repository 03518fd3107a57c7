"""model.layers: the published --l_layers (store_emb.py / clm.py keep GPT-2's first L blocks, then ln_f)."""

import numpy as np
import pytest
import torch
from transformers import GPT2Model

from conftest import make_model_dir
from helpers import weather_settings
from timekd_embed.checkpoint import keep_layers, load_lm
from timekd_embed.config import validate_config
from timekd_embed.errors import InputError
from timekd_embed.lm import calibrated_mask, last_token_states
from timekd_embed.packing import Prompt, batches, build_trie

P = 24


@pytest.fixture(scope="module")
def four_block_model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("gpt2-4-blocks"), n_layer=4)


def test_truncation_equals_gpt2_cut_after_block_l_then_ln_f(train_prompts, four_block_model_dir):
    """On a real GT prompt (window 0, first variable): our forward with the first 2 of 4 blocks
    against GPT2Model's own forward, its hidden state after block 2 put through ln_f."""
    prompts = train_prompts(P)
    ids = prompts.window_ids(0).gt[0]
    types = prompts.types(ids).astype(np.int8)
    (batch,) = batches([build_trie([[Prompt(ids, types)]])], [(0, 0)], 1 << 20)  # the prompt alone

    reference = GPT2Model.from_pretrained(four_block_model_dir).eval()
    codes, valid = torch.from_numpy(types)[None], torch.ones(1, len(ids), dtype=torch.bool)
    mask = calibrated_mask(codes, valid, codes, valid, torch.float32)
    with torch.inference_mode():
        hidden = reference(input_ids=torch.from_numpy(ids)[None], attention_mask=mask,
                           output_hidden_states=True).hidden_states            # embeddings, then after each block
        want = reference.ln_f(hidden[2][0, -1])                                 # after h[0], h[1]; then ln_f

    model = keep_layers(load_lm(str(four_block_model_dir), None, torch.float32), 2)
    assert len(model.h) == 2 and model.config.n_layer == 2
    got = last_token_states(model, batch, torch.device("cpu"))[0]
    assert (got - want).abs().max() < 1e-5
    everything = last_token_states(load_lm(str(four_block_model_dir), None, torch.float32), batch,
                                   torch.device("cpu"))[0]
    assert (everything - want).abs().max() > 1e-2         # the cut really changes the states


def test_null_keeps_every_block_and_out_of_range_is_one_sentence(tiny_model_dir):
    model = load_lm(str(tiny_model_dir), None, torch.float32)
    assert len(keep_layers(model, None).h) == 2
    with pytest.raises(InputError, match=r"model.layers = 3, but .* has 2 blocks; set it to 1 \.\. 2"):
        keep_layers(model, 3)


def test_schema_knows_model_layers():
    assert validate_config({"dataset": {"name": "w", "csv": "x.csv"}})["model"]["layers"] is None
    assert validate_config({"dataset": {"name": "w", "csv": "x.csv"}, "model": {"layers": 6}})["model"]["layers"] == 6
    with pytest.raises(InputError, match=r"model.layers = 0 is invalid"):
        validate_config({"dataset": {"name": "w", "csv": "x.csv"}, "model": {"layers": 0}})


def test_the_extraction_runs_the_kept_blocks_and_records_them(tiny_model_dir, tmp_path):
    from timekd_embed.extract import provenance
    from timekd_embed.sca import save_sca
    from timekd_embed.settings import Runtime
    from timekd_embed.teacher import load_teacher

    save_sca(tmp_path / "sca.safetensors", n_vars=21, d_model=64, seed=2024)
    settings = weather_settings(tiny_model_dir, layers=1)
    teacher = load_teacher(settings.teacher, tmp_path / "sca.safetensors", ["cpu"])
    assert len(teacher.model.h) == 1
    meta = provenance(settings, Runtime(device="cpu"), "train", [P],
                      {"input_sha256": "0" * 64, "seq_len": 96, "variables": []},
                      tmp_path / "sca.safetensors", teacher, 8192)[P]
    assert meta["layers"] == 1 and meta["settings"]["layers"] == 1


def test_model_layers_is_an_output_affecting_setting():
    """Tracked: the extraction rules' params and the settings every file records and shards compare."""
    from timekd_embed.settings import RUNTIME_KEYS, Settings

    base = {"dataset": {"name": "w", "csv": "x.csv"}}
    all_blocks = validate_config(base)
    six = validate_config(base | {"model": {"name_or_path": "gpt2", "layers": 6}})
    assert Settings.from_config(all_blocks).as_params() != Settings.from_config(six).as_params()
    assert Settings.from_config(six).as_params()["model"]["layers"] == 6
    settings = Settings.from_config(six)
    assert settings.layers == 6 and settings.recorded(24, "train")["layers"] == 6
    assert "layers" not in RUNTIME_KEYS and Settings.from_params(settings.as_params(), settings.model) == settings
