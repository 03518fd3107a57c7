"""Golden values: the numerics of one fixed tiny case, tied to the package version.

The workflow reruns an extraction when the package version changes (its params carry the
version), not when the code changes. So a change that moves any embedding value must come
with a version bump, or results computed before it would silently count as current. This
test fails on any such change: update GOLDEN_VERSION to the new __version__ and the values
below together, in the same commit. A rewrite with the same numerics (other batching,
another forward that is equal within float rounding) passes within TOLERANCE.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import WEATHER_CSV, make_model_dir
from helpers import extract_one, weather_settings
from timekd_embed import __version__
from timekd_embed.records import read_tensors
from timekd_embed.sca import save_sca
from timekd_embed.table import load_csv
from timekd_embed.windows import write_windows

GOLDEN_VERSION = "0.3.0"
# Window 0 of the train split of the case below, shape (1, 3 variables, 64), fp32 on the CPU.
GOLDEN_VALUES = {(0, 0, 0): 0.30365729331970215, (0, 0, 63): 0.9354958534240723, (0, 1, 10): 1.281636118888855,
                 (0, 2, 31): 0.5012220144271851, (0, 2, 63): -1.6338948011398315}
GOLDEN_SUM = -20.269480764865875
GOLDEN_ABS_SUM = 202.74052715301514
TOLERANCE = 1e-5       # per value (they are of order 1): float rounding of another summation order
SUM_TOLERANCE = 1e-4   # 192 values


@pytest.fixture(scope="module")
def golden_case(tmp_path_factory, weather_csv) -> Path:
    """The first 200 rows of weather.csv (date, p (mbar), T (degC), OT), seq_len 96, P = 24, one window;
    GPT-2 of 2 layers, width 64, 4 heads, random weights drawn with seed 0, the real tokenizer; SCA seed 2024."""
    tmp = tmp_path_factory.mktemp("golden")
    lines = WEATHER_CSV.read_bytes().splitlines(keepends=True)[:1 + 200]
    picked = [b",".join(line.rstrip(b"\r\n").split(b",")[i] for i in (0, 1, 2, 21)) + b"\r\n" for line in lines]
    (tmp / "weather.csv").write_bytes(b"".join(picked))
    model = make_model_dir(tmp / "model", n_layer=2, n_embd=64, n_head=4, seed=0)
    table = load_csv(tmp / "weather.csv", target="OT", layout="custom")
    write_windows(table, "custom", 96, [24], {"train": str(tmp / "train.parquet")})
    save_sca(tmp / "sca.safetensors", 3, 64, 2024)
    settings = weather_settings(model, limit_windows=1)
    extract_one(settings, tmp / "train.parquet", tmp / "sca.safetensors", tmp / "embeddings.safetensors",
                tmp / "embeddings.json")
    return tmp / "embeddings.safetensors"


def test_the_golden_values_belong_to_this_version():
    assert __version__ == GOLDEN_VERSION, (
        f"the package is {__version__} but the golden values are of {GOLDEN_VERSION}: rerun this case and write "
        "its values here, with GOLDEN_VERSION, in the commit that changes the version")


def test_the_embeddings_equal_the_golden_values(golden_case):
    tensors, metadata = read_tensors(golden_case)
    embeddings = tensors["embeddings"].double()
    assert embeddings.shape == (1, 3, 64)
    assert metadata["package"] == f"timekd-embed {GOLDEN_VERSION}"
    for index, value in GOLDEN_VALUES.items():
        assert embeddings[index].item() == pytest.approx(value, abs=TOLERANCE), index
    assert embeddings.sum().item() == pytest.approx(GOLDEN_SUM, abs=SUM_TOLERANCE)
    assert embeddings.abs().sum().item() == pytest.approx(GOLDEN_ABS_SUM, abs=SUM_TOLERANCE)
