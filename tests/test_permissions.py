"""Every output follows the umask: a shared results folder stays readable (and rsync -a keeps it so)."""

from __future__ import annotations

import stat

import pytest

from helpers import snakemake, weather_config


@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_a_full_run_gives_every_output_the_umask_mode(tmp_path, weather_csv, tiny_model_dir, umask):
    # bf16, so that the parity recomputation, its histogram and the report's numbers are all written
    config = weather_config(pred_lens=[24], model={"name_or_path": str(tiny_model_dir)}, precision="bf16",
                            limit_windows=2, parity={"windows": 2, "min_cosine": 0.9})
    run = snakemake(tmp_path, config, "--cores", "2", umask=umask)
    assert run.returncode == 0, run.stderr[-3000:]
    results = tmp_path / "results" / "weather"
    modes = {str(p.relative_to(results)): stat.S_IMODE(p.stat().st_mode) for p in results.rglob("*")}
    assert {"sca.safetensors", "embeddings/24/train.safetensors", "embeddings/24/val.json", "MANIFEST.json",
            "windows/train.parquet", "validation/parity_24.json", "validation/summary.html",
            "validation/report/24_train.html", "validation/cosine_24.png", "logs/windows.log"} <= set(modes)
    want = {path: (0o777 if (results / path).is_dir() else 0o666) & ~umask for path in modes}
    assert modes == want
