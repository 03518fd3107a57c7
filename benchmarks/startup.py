"""Fixed start-up of one extraction job, stage by stage, on this machine (config/README.md, `shard_windows`).

Each stage is what `workflow/scripts/extract.py` does before its first forward pass:
  imports   python start + `import timekd_embed.extract` (torch, transformers, the package)
  windows   read the split's Parquet
  prompts   tokenizer + `SplitPrompts` for the whole split (extract_split checks every prompt's length)
  model     `load_teacher`: config, tokenizer, weights from model.safetensors, the SCA, placement
Every figure is wall time of a fresh process (`--repeats` of them, all printed). The model is a
GPT-2-small-shaped folder (12 layers, d = 768) with random weights: loading time depends on the size,
not the values. Run from the repository root:

    PYTHONPATH=workflow python benchmarks/startup.py --csv ../shared/data/weather/weather.csv \
        --tokenizer ../shared/data/gpt2-tokenizer --pred-len 24 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
began = time.perf_counter()
from timekd_embed.checkpoint import load_config, load_tokenizer
from timekd_embed.settings import Settings
from timekd_embed.split_job import prepare_split
from timekd_embed.teacher import load_teacher
from timekd_embed.windows import read_windows
imported = time.perf_counter()
windows_path, sca, model, pred_len = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
split_windows = read_windows(windows_path)
read = time.perf_counter()
settings = Settings(name="weather", template=None, seq_len=split_windows.meta["seq_len"], model=model, revision=None,
                    layers=None, precision="fp32", fidelity="reference", limit_windows=None)
tokenizer = load_tokenizer(model)
job = prepare_split(tokenizer, split_windows, settings, [pred_len], load_config(model).n_positions)
prompts = job.prompts[pred_len]
built = time.perf_counter()
load_teacher(settings.teacher, sca, ["cpu"])
loaded = time.perf_counter()
print(json.dumps({"imports_in_process": imported - began, "windows": read - imported, "prompts": built - read,
                  "model": loaded - built, "windows_in_split": prompts.n_windows}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", required=True, help="weather.csv")
    parser.add_argument("--tokenizer", required=True, help="folder with vocab.json and merges.txt")
    parser.add_argument("--pred-len", type=int, default=24, help="horizon P")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes to time")
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2Model

    from timekd_embed.sca import save_sca
    from timekd_embed.table import load_csv
    from timekd_embed.windows import write_windows

    work = Path(tempfile.mkdtemp(prefix="startup-"))
    try:
        model = work / "gpt2-small-shape"
        torch.manual_seed(0)
        GPT2Model(GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257)).save_pretrained(model)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(Path(args.tokenizer) / name, model / name)
        windows_paths = {split: str(work / f"{split}.parquet") for split in ("train", "val", "test")}
        write_windows(load_csv(args.csv, target="OT", layout="custom"), "custom", 96, [args.pred_len], windows_paths)
        save_sca(work / "sca.safetensors", 21, 768, seed=2024)
        runs = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, windows_paths["train"], str(work / "sca.safetensors"),
                                  str(model), str(args.pred_len)], capture_output=True, text=True, check=True,
                                 env=os.environ | {"HF_HUB_OFFLINE": "1"})
            total = time.perf_counter() - began
            stages = json.loads(out.stdout.strip().splitlines()[-1])
            stages["total"] = total
            stages["imports"] = total - stages["windows"] - stages["prompts"] - stages["model"]
            runs.append(stages)
        load = os.getloadavg()
        print(json.dumps({"cpu_count": os.cpu_count(), "load_average": load, "pred_len": args.pred_len,
                          "runs": runs}, indent=1))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
