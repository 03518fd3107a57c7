"""Config validation: the schema in workflow/schemas, defaults filled in, one-sentence errors."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import jsonschema
import yaml

from .errors import InputError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _fill_defaults(config: dict, schema: dict) -> None:
    """Insert the schema's `default` for every missing key, recursively."""
    for key, sub in schema.get("properties", {}).items():
        if key not in config and "default" in sub:
            config[key] = copy.deepcopy(sub["default"])
        if isinstance(config.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(config[key], sub)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = ""
    for p in error.absolute_path:
        parts += f"[{p}]" if isinstance(p, int) else (f".{p}" if parts else str(p))
    return parts or "(top level)"


def _sentence(error: jsonschema.ValidationError, source: str) -> str:
    where = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        prefix = f"{where}." if where != "(top level)" else ""
        return (f"{source}: unknown config key {', '.join(prefix + k for k in extra)}; "
                f"allowed keys there are {', '.join(allowed)} (see config/README.md).")
    if error.validator == "required":
        return f"{source}: config key {where} is missing {error.message.split(' is a required')[0]}; add it (see config/README.md)."
    if error.validator == "pattern" and error.absolute_path and error.absolute_path[-1] == "name":
        return (f"{source}: config key {where} = {error.instance!r} must be a plain folder name "
                "(letters, digits, '_', '-', '.'; no path separators or '..').")
    if error.validator == "uniqueItems":
        return f"{source}: config key {where} = {error.instance} holds a value twice; list each value once."
    return f"{source}: config key {where} = {error.instance!r} is invalid: {error.message}; see config/README.md."


def validate_config(config: dict, source: str = "config") -> dict:
    """Return a copy of `config` with defaults filled in, or raise InputError naming the key."""
    schema = load_schema()
    config = copy.deepcopy(dict(config))
    _fill_defaults(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise InputError(_sentence(errors[0], source))
    return config


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found; pass an existing --configfile.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the syntax.") from None
    return validate_config(raw, str(path))


def config_hash(config: dict, keys: list[str] | None = None) -> str:
    """A short, stable hash of (a part of) the config, for metadata and manifests."""
    part = {k: config[k] for k in keys} if keys else config
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]
