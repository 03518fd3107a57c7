"""Shared fixtures: the real data in ../shared/data, tiny random models of each teacher family with
the real tokenizers."""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from transformers import GPT2TokenizerFast

# Under pytest-xdist the workers already fill the cores: each worker, and each process it starts
# without threads of its own (a job sets its own), computes on one thread. Two threads per worker
# on 2 cores oversubscribed them: one oracle test took 23 s instead of 3.5 s, the suite 305 s
# instead of 265 s. Set before torch is imported; torch, transformers and pandas are imported where
# used, so that xdist's controller, which runs no test, starts without them (3 s).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
# The real data the tests read (weather.csv, the ETT files, tokenizers): ../shared/data where it lies
# beside the clone (CI, this project's machines), else the cache `make test-data` fills once
# (tests/fetch_data.py): $TIMEKD_TEST_DATA, by default ~/.cache/timekd-embed/test-data.
BESIDE_THE_CLONE = ROOT.parent / "shared" / "data"
TEST_DATA_CACHE = Path(os.environ.get("TIMEKD_TEST_DATA") or Path.home() / ".cache" / "timekd-embed" / "test-data")
SHARED_DATA = BESIDE_THE_CLONE if BESIDE_THE_CLONE.is_dir() else TEST_DATA_CACHE
WEATHER_CSV = SHARED_DATA / "weather" / "weather.csv"
TOKENIZER_DIR = SHARED_DATA / "gpt2-tokenizer"
TOKENIZERS = SHARED_DATA / "tokenizers"  # real Qwen2, Llama 3 and Phi-3 tokenizers (its README)
TRAIN_ROWS = 36887  # weather.csv: int(0.7 * 52,696)
# One reason for every test that lacks its data, so that pytest -ra folds their skips into one line.
NO_DATA = (f"the test data is not on this machine: run `make test-data` once (it fetches weather.csv, the ETT "
           f"files and the GPT-2 tokenizer into {TEST_DATA_CACHE}; TIMEKD_TEST_DATA moves it), or put "
           "../shared/data beside the clone")


def need(path: Path) -> Path:
    """`path`, or a skip (one reason for all: NO_DATA) where the test data is absent; in CI (CI=true)
    its absence fails.

    CI always has ../shared beside the clone: a test that skipped there would prove nothing.
    """
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing in CI; ../shared/data must lie beside the clone")
        pytest.skip(NO_DATA)
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Every NO_DATA skip reported at need()'s own line, so that `pytest -ra` prints one line for all."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and report.longrepr[2].endswith(NO_DATA):
        report.longrepr = (str(Path(__file__).relative_to(ROOT)), need.__code__.co_firstlineno, report.longrepr[2])
    return report


@pytest.fixture(scope="session")
def weather_csv() -> Path:
    return need(WEATHER_CSV)


@pytest.fixture(scope="session")
def tokenizer() -> GPT2TokenizerFast:
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(need(TOKENIZER_DIR))


def make_model_dir(path: Path, n_layer=2, n_embd=64, n_head=4, n_positions=1024, seed=0) -> Path:
    """A GPT-2 folder as users have it (config.json, model.safetensors, vocab.json, merges.txt)."""
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions, vocab_size=50257)
    GPT2Model(config).save_pretrained(path, safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(need(TOKENIZER_DIR) / name, path / name)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-gpt2"))


# family: (tokenizer folder under TOKENIZERS, config class, checkpoint class, extra config).
# Checkpoints are *ForCausalLM as on the hub (keys `model.layers...`, plus `lm_head.weight` when
# untied); tied or not as the public configs: Qwen2.5-0.5B and Llama-3.2-1B tie, Phi-3 and
# Mistral-7B do not. Mistral gets the phi3 tokenizer: Mistral-7B's own is a SentencePiece BPE with
# byte fallback, `▁` for a space, one digit a token and `<s>` added, like Phi-3's (the Llama 2
# vocabulary), so the Llama-family classes are also run with a SentencePiece tokenizer.
FAMILIES = {
    "qwen2": ("qwen2", "Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "llama": ("llama3", "LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True, "rope_theta": 500000.0}),
    "mistral": ("phi3", "MistralConfig", "MistralForCausalLM", {"tie_word_embeddings": False}),
    "phi3": ("phi3", "Phi3Config", "Phi3ForCausalLM", {"tie_word_embeddings": False}),
}
# The longest weather prompt at P = 192 (GT, any window of weather.csv): 1,784 tokens with qwen2,
# 1,785 with phi3 (one digit a token, plus <s>), 1,194 with llama3 (GPT-2: 904). 2,048 fits them.
FAMILY_POSITIONS = 2048


def make_family_model_dir(path: Path, family: str, n_layer=2, hidden=64, heads=4, kv_heads=2, seed=0,
                          intermediate=128, **config) -> Path:
    """A random model folder of `family` as users have it: config.json, model.safetensors and the
    family's REAL tokenizer files (tokenizer.json, tokenizer_config.json); "gpt2" is `make_model_dir`.

    The vocabulary is the tokenizer's (`len(tokenizer)`). Weights are drawn with
    initializer_range 0.2 (not HF's 0.02, under which attention is nearly uniform and position or
    mask errors hide), and norm weights and biases are random too (HF starts them at 1 and 0).
    `config` overrides config fields (e.g. sliding_window).
    """
    if family == "gpt2":
        return make_model_dir(path, n_layer=n_layer, n_embd=hidden, n_head=heads, seed=seed)
    import torch
    import transformers
    from transformers import AutoTokenizer

    tokenizer_name, config_class, model_class, family_config = FAMILIES[family]
    tokenizer_dir = need(TOKENIZERS / tokenizer_name)
    fields = dict(vocab_size=len(AutoTokenizer.from_pretrained(tokenizer_dir)), hidden_size=hidden,
                  intermediate_size=intermediate, num_hidden_layers=n_layer, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, max_position_embeddings=FAMILY_POSITIONS,
                  initializer_range=0.2) | family_config | config
    if family == "phi3":
        fields.setdefault("original_max_position_embeddings", fields["max_position_embeddings"])
    model_config = getattr(transformers, config_class)(**fields)
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(model_config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.1 * torch.randn_like(param))
    model.save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, path / name)
    return path


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory):
    """family ("qwen2", "llama", "mistral", "phi3") -> its tiny model folder, built on first use."""
    @functools.cache
    def build(family: str) -> Path:
        return make_family_model_dir(tmp_path_factory.mktemp(f"tiny-{family}"), family)
    return build


# ------------------------------------------------------------------ a job's process state


@pytest.fixture
def job_logging():
    """job() configures the root logger for a job process; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in set(root.handlers) - set(handlers):
        handler.close()
    root.handlers[:], root.level = handlers, level


@pytest.fixture(scope="session")
def train_split(weather_csv):
    """Variables, raw values (R, N) and stamps (R, 6) of the weather train split."""
    import pandas as pd

    df = pd.read_csv(weather_csv, nrows=TRAIN_ROWS)
    from timekd_embed.table import stamps
    return df.columns[1:].tolist(), df.iloc[:, 1:].to_numpy(), stamps(pd.to_datetime(df["date"]))


@pytest.fixture(scope="session")
def train_prompts(train_split, tokenizer):
    """`train_prompts(pred_len, name="weather")`: SplitPrompts of the whole weather train split,
    each built once per session (seconds apiece)."""
    from timekd_embed.prompts import SplitPrompts
    _, raw, stamps = train_split
    built = {}

    def get(pred_len: int, name: str = "weather") -> SplitPrompts:
        if (pred_len, name) not in built:
            built[pred_len, name] = SplitPrompts(tokenizer, raw, stamps, name, pred_len)
        return built[pred_len, name]
    return get


# Modules whose tests share the session runs of tests/runs.py run on the same worker.
SHARED_RUNS = dict.fromkeys(["tests/test_export.py", "tests/test_faults.py", "tests/test_manifest.py",
                             "tests/test_reruns.py", "tests/test_validate.py", "tests/test_workflow.py"],
                            "tests/runs.py")
# The longest units start first, each on the next free worker, the rest after them: left to
# xdist's order (most tests first), the demo once queued behind the shared runs' 150 worker-
# seconds on one worker while the other idled. Measured worker-seconds here: the shared runs'
# modules about 150, test_offline_install about 130 (pip's work), test_demo about 50,
# test_leases about 60 (snakemake runs side by side); test_fp32_per_horizon (the second .test
# case) 82 CPU-seconds, measured on a loaded machine; no other module above 25.
LONGEST_FIRST = ["tests/runs.py", "tests/test_offline_install.py", "tests/test_leases.py", "tests/test_demo.py",
                 "tests/test_fp32_per_horizon.py"]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs on pytest-xdist workers a whole module at a time, so that a module's
    real pipeline runs (module and session fixtures) are made once, not once per worker."""
    from xdist.scheduler import LoadFileScheduling

    class ByModule(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return SHARED_RUNS.get(module, module)

        def _assign_work_unit(self, node) -> None:
            for unit in reversed(LONGEST_FIRST):     # to the front of the queue, in this order
                if unit in self.workqueue:
                    self.workqueue.move_to_end(unit, last=False)
            super()._assign_work_unit(node)

    return ByModule(config, log)
