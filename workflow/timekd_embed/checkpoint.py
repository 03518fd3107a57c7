"""Loading the teacher's language model and tokenizer, and the checks on what was loaded.

The model is exactly the tensors of its safetensors file(s): before any weight is read, the
file headers are compared with the model the config describes (built on the meta device, so
no memory and no init cost); after loading, transformers' own loading report is checked
again, so no weight is ever left initialised rather than loaded. No model code is taken
from a folder or the hub (trust_remote_code stays off).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel

from .errors import InputError
from .families import Family, family_of
from .lm import decoder_blocks, layout_of
from .model_files import CONFIG, WEIGHTS, WEIGHTS_INDEX, existing_folder, index_shards, tokenizer_files, weight_files
from .records import read_header

FOLDER_FILES = f"{CONFIG}, {WEIGHTS} (or its shards), the tokenizer files"
SHOWN = 3  # names quoted per kind of difference


@contextmanager
def _loading(name_or_path: str, revision: str | None):
    """A model that cannot be loaded (hub offline, unknown id or revision, damaged file): one sentence."""
    try:
        yield
    # what transformers raises for files it cannot fetch or parse; safetensors' own error for a damaged file
    except (OSError, ValueError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if existing_folder(name_or_path) is not None:
            raise InputError(f"model folder {name_or_path} cannot be loaded ({first}); check its files "
                             f"({FOLDER_FILES}).") from None
        raise InputError(f"model {name_or_path!r} (config key model.name_or_path, revision {revision or 'default'}) "
                         f"is no local folder and could not be loaded from the model hub ({first}); fix the id, "
                         f"allow network access for the first run, or point it at a local folder with "
                         f"{FOLDER_FILES}.") from None


def load_tokenizer(name_or_path: str, revision: str | None = None):
    """The model's own tokenizer (AutoTokenizer: fast, no remote code).

    Raises:
        InputError: a local folder without tokenizer files, or a hub id that cannot be loaded.
    """
    local = existing_folder(name_or_path)
    if local is not None:
        tokenizer_files(local)
    with _loading(name_or_path, revision):
        return AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=False)


def load_config(name_or_path: str, revision: str | None = None) -> PretrainedConfig:
    """The model's config.json, which must describe a supported family (families.py).

    Raises:
        InputError: no config.json, an unsupported model type, or a hub id that cannot be loaded.
    """
    local = existing_folder(name_or_path)
    if local is not None and not (local / CONFIG).is_file():
        raise InputError(f"model folder {local} has no config.json; point model.name_or_path at a model folder.")
    with _loading(name_or_path, revision):
        raw, _ = PretrainedConfig.get_config_dict(name_or_path, revision=revision)
        family = family_of(raw, f"model {name_or_path}")
        return family.config_class.from_pretrained(name_or_path, revision=revision)


def weights(name_or_path: str, revision: str | None = None) -> list[Path]:
    """The safetensors file(s) the weights come from: a local folder's (model_files.weight_files), or
    the hub cache's copy of model.safetensors or of every shard its index lists (model_files.index_shards).

    Raises:
        InputError: no safetensors weights (pickle weights are never loaded: unpickling can run code).
    """
    local = existing_folder(name_or_path)
    if local is not None:
        return weight_files(local)
    from transformers.utils import cached_file
    with _loading(name_or_path, revision):
        index = cached_file(name_or_path, WEIGHTS_INDEX, revision=revision,
                            _raise_exceptions_for_missing_entries=False)
        names = index_shards(Path(index)) if index else [WEIGHTS]
        return [Path(cached_file(name_or_path, name, revision=revision)) for name in names]


def expected_shapes(config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the family's base model loads, built on the meta device."""
    with torch.device("meta"):
        model = family_of(config).model_class(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def file_shapes(paths: list[Path]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in safetensors files, from their headers alone (records.read_header).

    Raises:
        InputError: a file is missing, or its header is damaged or describes another size.
    """
    shapes = {}
    for path in paths:
        header, _ = read_header(path)
        shapes |= {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
    return shapes


def _as_model_names(shapes: dict[str, tuple[int, ...]], family: Family) -> dict[str, tuple[int, ...]]:
    """Drop the base-model prefix of a *ForCausalLM checkpoint ("transformer.", "model."), as from_pretrained does."""
    body = [name for name in shapes if name != "lm_head.weight"]
    if body and all(name.startswith(family.prefix) for name in body):
        return {name.removeprefix(family.prefix): shape for name, shape in shapes.items()}
    return shapes


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (", ..." if len(names) > SHOWN else "")


def _refuse_differences(where: str, config: PretrainedConfig, missing: list[str], unexpected: list[str],
                        reshaped: list[tuple[str, tuple, tuple]], files: list[Path]) -> None:
    """One InputError naming every kind of difference between the file(s) and the model, or nothing."""
    family = family_of(config)
    missing = sorted(name for name in missing if not family.tolerated.fullmatch(name))
    unexpected = sorted(name for name in unexpected if not family.tolerated.fullmatch(name))
    if not (missing or unexpected or reshaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) the model needs are not in the file ({_listed(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) of the file are not the model's ({_listed(unexpected)})")
    if reshaped:
        shown = "; ".join(f"{name}: {tuple(got)} in the file, {tuple(want)} expected"
                          for name, got, want in reshaped[:SHOWN])
        more = "; ..." if len(reshaped) > SHOWN else ""
        parts.append(f"{len(reshaped)} tensor(s) have another shape ({shown}{more})")
    dims = ", ".join(f"{name} {getattr(config, name)}" for name in family.dims)
    weights_name = WEIGHTS if len(files) == 1 else "safetensors shards"
    raise InputError(f"{where}: the weights are not the {family.name} that config.json describes ({dims}): "
                     f"{'; '.join(parts)}; the language model would run with weights that were initialised, not "
                     f"loaded, so use a folder saved by save_pretrained(..., safe_serialization=True) of the model "
                     f"whose config.json belongs to its {weights_name}.")


def _where(name_or_path: str, revision: str | None, files: list[Path]) -> str:
    shown = ", ".join(path.name for path in files[:SHOWN]) + (", ..." if len(files) > SHOWN else "")
    if existing_folder(name_or_path) is not None:
        return f"model folder {name_or_path} (config key model.name_or_path), {shown}"
    return f"model {name_or_path!r} (config key model.name_or_path, revision {revision or 'default'}), {files[0]}"


def check_weights(name_or_path: str, revision: str | None, config: PretrainedConfig) -> list[Path]:
    """The safetensors file(s) hold exactly the tensors the family's base model loads, by name and shape.

    A header-only comparison: nothing is loaded, so a 6 GB gpt2-xl costs a few milliseconds.

    Returns:
        The weight files (weights).
    Raises:
        InputError: tensors missing, unexpected (a prefix such as `gpt2.` from a wrapper
            module) or of another shape (another width or depth), beyond the TOLERATED ones,
            naming the folder, how many tensors, the first few names and what to do.
    """
    files = weights(name_or_path, revision)
    try:
        found = _as_model_names(file_shapes(files), family_of(config))
    except (InputError, OSError, KeyError, TypeError):  # a damaged header or size, an unreadable file, no shapes
        raise InputError(f"{_where(name_or_path, revision, files)} cannot be read as safetensors (damaged "
                         "header, or truncated); replace the file with the model's own model.safetensors.") from None
    wanted = expected_shapes(config)
    reshaped = [(name, found[name], wanted[name]) for name in sorted(wanted.keys() & found.keys())
                if found[name] != wanted[name] and not family_of(config).tolerated.fullmatch(name)]
    _refuse_differences(_where(name_or_path, revision, files), config, sorted(wanted.keys() - found.keys()),
                        sorted(found.keys() - wanted.keys()), reshaped, files)
    return files


def check_vocab(tokenizer, config: PretrainedConfig, name_or_path: str) -> None:
    """Fail when the tokenizer does not belong to the model: it has more tokens than the model has
    embeddings (fewer is usual: Qwen2.5 and Phi-3 pad their embedding tables).

    Raises:
        InputError: naming both sizes.
    """
    # Its ids would index embeddings the model does not have: a tokenizer from another model.
    if len(tokenizer) > config.vocab_size:
        raise InputError(f"model {name_or_path}: the tokenizer has {len(tokenizer)} tokens but the model "
                         f"{config.vocab_size} embeddings (config.json vocab_size); use the tokenizer that "
                         "belongs to this model.")


def check_model(name_or_path: str, revision: str | None = None) -> tuple[PretrainedConfig, object]:
    """Config, safetensors weights that fit it exactly and a matching tokenizer; else one sentence.

    Returns:
        (the model's config, its tokenizer).
    Raises:
        InputError: a missing or unsupported config, missing or non-fitting weights
            (check_weights), missing tokenizer files or a tokenizer of another vocabulary.
    """
    config = load_config(name_or_path, revision)
    check_weights(name_or_path, revision, config)
    tokenizer = load_tokenizer(name_or_path, revision)
    check_vocab(tokenizer, config, name_or_path)
    return config, tokenizer


def _mismatch_entry(entry) -> tuple[str, tuple, tuple]:
    """transformers reports a mismatched key as (name, file shape, model shape)."""
    if isinstance(entry, str):
        return entry, (), ()
    name, got, want = entry
    return name, tuple(got), tuple(want)


def load_lm(name_or_path: str, revision: str | None, dtype: torch.dtype) -> PreTrainedModel:
    """The family's base model in eval mode with frozen weights: exactly the tensors of the named file(s).

    Raises:
        InputError: as check_weights, or a model that cannot be loaded.
    """
    config = load_config(name_or_path, revision)
    files = check_weights(name_or_path, revision, config)  # before any loading: fail early, in one sentence
    # GPT-2's tanh GELU as one fused kernel instead of five elementwise ops (about 11% of the
    # CPU time): the same formula, equal within float rounding (tests/test_lm.py).
    if getattr(config, "activation_function", None) == "gelu_new":
        config.activation_function = "gelu_pytorch_tanh"
    with _loading(name_or_path, revision):
        model, report = family_of(config).model_class.from_pretrained(
            name_or_path, revision=revision, config=config, dtype=dtype, use_safetensors=True,
            trust_remote_code=False, output_loading_info=True)
    reshaped = [_mismatch_entry(entry) for entry in report.get("mismatched_keys", ())]
    _refuse_differences(_where(name_or_path, revision, files), config, list(report.get("missing_keys", ())),
                        list(report.get("unexpected_keys", ())), reshaped, files)
    model.requires_grad_(False)
    return model.eval()


def keep_layers(model: PreTrainedModel, layers: int | None) -> PreTrainedModel:
    """Keep the first `layers` decoder blocks (the final norm stays): the published `--l_layers` of
    store_emb.py, which cuts clm.py's GPT-2 to `h[:L]` and applies `ln_f` after it.

    Args:
        model: a loaded base model, changed in place (before any placement on devices).
        layers: blocks to keep, 1 .. its number of blocks; None keeps all (the published default).
    Raises:
        InputError: `layers` is outside 1 .. the model's number of blocks (config key model.layers).
    """
    if layers is None:
        return model
    blocks = decoder_blocks(model)
    if not 1 <= layers <= len(blocks):
        raise InputError(f"config key model.layers = {layers}, but {model.config.name_or_path or 'the model'} has "
                         f"{len(blocks)} blocks; set it to 1 .. {len(blocks)}, or null for all of them.")
    setattr(model, layout_of(model).blocks, blocks[:layers])
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = model.config.layer_types[:layers]
    return model


def checkpoint_matches(model: torch.nn.Module, files: list[Path], name: str) -> str | None:
    """None when every parameter of the loaded model is the tensor of that name in its weight files
    (cast to the model's dtype) and finite; else one sentence naming the parameter.

    Catches a checkpoint that loaded with missing or renamed keys (random weights in their
    place) and weights that hold NaN or inf. Costs a full read of the weights (preflight).
    """
    stored = {}
    for path in files:
        with safe_open(str(path), framework="pt") as checkpoint:
            stored |= {key.removeprefix(family_of(model.config).prefix): (path, key)
                       for key in checkpoint.keys()}  # noqa: SIM118 (safe_open is no mapping)
    for key, param in model.named_parameters():
        if key not in stored:
            return (f"the loaded model is not the named weights: parameter {key} is not in {files[0].parent}, so it "
                    f"was initialised at random; use a complete checkpoint for {name}.")
        path, name_in_file = stored[key]
        with safe_open(str(path), framework="pt") as checkpoint:
            tensor = checkpoint.get_tensor(name_in_file).to(param.dtype)
        loaded = param.detach().cpu()
        if not torch.allclose(loaded, tensor, rtol=0, atol=0, equal_nan=True):
            return (f"the loaded model is not the named weights: parameter {key} differs from {path}; "
                    "check model.name_or_path and model.revision.")
        if not torch.isfinite(loaded).all():
            return (f"{path} holds non-finite values (NaN or inf) in parameter {key}; the checkpoint is "
                    "damaged: download it again.")
    return None
