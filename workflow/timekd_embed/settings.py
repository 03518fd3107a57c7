"""The config keys a job needs, in two kinds, turned into job settings in one place.

- `Settings`: the keys that decide an embedding. They are the extraction rules' params (so a
  change reruns them, and nothing else does), recorded in every file's metadata, and must
  agree between the shards of one file. The rules pass them as `Settings.as_params()`, the
  scripts read them back with `Settings.from_params`: one list of keys, written once. Where
  the model is (a folder) is carried along but is no setting: never a param nor recorded, so
  moving the model folder reruns nothing (its files' content is tracked by sha256,
  fingerprint.py); jobs read it from the config (`model_location`).
- `Runtime`: the keys that change only the speed (device, gpus_per_job, batch_tokens,
  placement). They are never params, so following an out-of-memory hint ("lower
  batch_tokens") or letting cluster nodes pick other placements never invalidates work
  already done; jobs read them from the config (`Runtime.from_config`) and record them for
  information only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher a job loads: config keys model.* and precision."""
    model: str
    revision: str | None
    layers: int | None  # the first L blocks, then the final norm; None: all
    precision: str


@dataclass(frozen=True)
class Settings:
    """The config keys that decide an embedding (for given input data and model files)."""
    name: str                # dataset.name: the template and the date format follow from it
    template: str | None     # dataset.template
    seq_len: int
    model: str               # where the job loads the model from (model_location): no setting, see above
    revision: str | None     # model.revision (a hub model's commit)
    layers: int | None       # model.layers
    precision: str
    fidelity: str
    limit_windows: int | None

    @classmethod
    def from_config(cls, config: dict) -> Settings:
        """The settings of the validated config (config.validate_config, defaults filled in)."""
        model = config["model"]
        return cls(name=config["dataset"]["name"], template=config["dataset"]["template"],
                   seq_len=config["seq_len"], model=model["name_or_path"], revision=model["revision"],
                   layers=model.get("layers"), precision=config["precision"], fidelity=config["fidelity"],
                   limit_windows=config["limit_windows"])

    def as_params(self) -> dict:
        """The rules' params: config-shaped (model.* nested as in the config), so that equal settings
        are equal params; without the model's location."""
        return {"name": self.name, "template": self.template, "seq_len": self.seq_len,
                "model": {"revision": self.revision, "layers": self.layers},
                "precision": self.precision, "fidelity": self.fidelity, "limit_windows": self.limit_windows}

    @classmethod
    def from_params(cls, params: dict, model: str) -> Settings:
        """The settings a rule's params (as_params) carry, with the model's location (model_location)."""
        flat = {key: value for key, value in params.items() if key != "model"}
        return cls(**flat, model=model, revision=params["model"]["revision"], layers=params["model"].get("layers"))

    @property
    def teacher(self) -> TeacherSpec:
        """The teacher these settings load."""
        return TeacherSpec(self.model, self.revision, self.layers, self.precision)

    def recorded(self, pred_len: int, split: str) -> dict:
        """What a file of one horizon and split records as its settings (and gather and parity
        compare): these fields but the model's location, the horizon and the split."""
        return {key: value for key, value in asdict(self).items() if key != "model"} | {"pred_len": int(pred_len),
                                                                                         "split": split}


def model_location(config: dict) -> str:
    """Where the jobs load the model from: model.name_or_path of the config a job sees, as the Snakefile
    leaves it (a hub id's resources/models/<id>/, model_files.local_model). Read from the config, never
    a param: a location is no rerun trigger."""
    return config["model"]["name_or_path"]


@dataclass(frozen=True)
class Runtime:
    """The config keys that change only the speed; recorded for information, never compared."""
    device: str = "auto"
    gpus_per_job: int = 1
    batch_tokens: int | None = None  # None: devices.token_budget picks one for the devices
    placement: str = "auto"

    @classmethod
    def from_config(cls, config: dict) -> Runtime:
        """The runtime keys of the validated config (jobs read them there: they are no rule params)."""
        return cls(**{field.name: config[field.name] for field in fields(cls)})


RUNTIME_KEYS = tuple(field.name for field in fields(Runtime))
