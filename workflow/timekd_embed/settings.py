"""What one extraction (or parity, or preflight) job needs, built from the validated config.

The one place that turns config keys into job settings. Two kinds of keys:
- output-affecting keys decide the embeddings: they are the extraction rules' params (so a
  change reruns them), are recorded in every file's metadata, and must agree between the
  shards of one file;
- runtime keys (device, gpus_per_job, batch_tokens, placement) change only the speed:
  they are recorded for information and never compared, so following an out-of-memory hint
  ("lower batch_tokens") or letting cluster nodes pick other placements never invalidates
  work already done.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

RUNTIME_FIELDS = ("device", "gpus_per_job", "batch_tokens", "placement")


def embedding_settings(config: dict) -> dict:
    """The config keys that decide an embedding, as the extraction rules' params.

    Args:
        config: the validated config (config.validate_config), defaults filled in.

    Returns:
        A JSON-able dict; equal dicts mean equal embeddings for equal inputs.
    """
    return {
        "name": config["dataset"]["name"],
        "template": config["dataset"]["template"],
        "seq_len": config["seq_len"],
        "model": config["model"],  # name_or_path, revision, layers
        "precision": config["precision"],
        "fidelity": config["fidelity"],
        "limit_windows": config["limit_windows"],
    }


@dataclass(frozen=True)
class Settings:
    """One job's settings: the first block decides the output, the second only the speed."""

    name: str
    template: str | None
    pred_len: int
    split: str
    model: str
    revision: str | None
    precision: str
    fidelity: str
    limit_windows: int | None
    layers: int | None = None  # model.layers: the first L blocks, then ln_f (lm.keep_layers); None all
    # runtime only (RUNTIME_FIELDS)
    device: str = "auto"
    gpus_per_job: int = 1
    batch_tokens: int | None = None  # None: devices.token_budget picks one for the devices
    placement: str = "auto"

    @classmethod
    def from_config(cls, config: dict, pred_len: int, split: str) -> Settings:
        """The settings of the job for one horizon and split.

        Args:
            config: the validated config (config.validate_config), defaults filled in.
            pred_len: the horizon P, in time steps.
            split: "train", "val" or "test".
        Returns:
            The Settings (batch_tokens None when the config leaves it to the devices).
        """

        return cls(
            name=config["dataset"]["name"], template=config["dataset"]["template"], pred_len=int(pred_len),
            split=str(split), model=config["model"]["name_or_path"], revision=config["model"]["revision"],
            precision=config["precision"], fidelity=config["fidelity"], limit_windows=config["limit_windows"],
            layers=config["model"].get("layers"),
            device=config["device"], gpus_per_job=config["gpus_per_job"], batch_tokens=config["batch_tokens"],
            placement=config["placement"],
        )

    def output_fields(self) -> dict:
        """The fields that decide the embeddings (what shards must agree on)."""
        return {key: value for key, value in asdict(self).items() if key not in RUNTIME_FIELDS}

    def runtime_fields(self) -> dict:
        """The fields that change only the speed (recorded for information)."""
        return {key: getattr(self, key) for key in RUNTIME_FIELDS}
