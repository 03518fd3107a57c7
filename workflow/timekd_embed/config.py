"""Config validation: the schema in workflow/schemas, defaults filled in, one-sentence errors.

The config layer owns every decision that follows from the keys alone: defaults, the
concrete split layout ("auto" resolved from the dataset name once, here), the numbers
typed on the command line (Snakemake hands `--config` list and mapping items over as
strings), and where each value came from, so that an error names the file or `--config`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .errors import InputError

if TYPE_CHECKING:       # imported where a config is validated: the GPU check runs where it is not installed
    import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
LAYOUTS = ("custom", "ett_hour", "ett_minute")


def resolve_layout(layout: str, name: str) -> str:
    """The concrete split layout; "auto" picks it from the dataset name as the reference does.

    Args:
        layout: config key dataset.layout: "auto" or one of LAYOUTS.
        name: config key dataset.name (case-sensitive: "ETTh..." -> ett_hour, "ETTm..." -> ett_minute).
    Returns:
        One of LAYOUTS.
    Raises:
        InputError: an unknown layout, naming the key.
    """
    if layout == "auto":
        if name.startswith("ETTh"):
            return "ett_hour"
        if name.startswith("ETTm"):
            return "ett_minute"
        return "custom"
    if layout in LAYOUTS:
        return layout
    raise InputError(
        f"Config key dataset.layout is {layout!r}, which is not a known layout; "
        f"set it to one of auto, {', '.join(LAYOUTS)}."
    )


def load_schema() -> dict:
    """The config's JSON schema (workflow/schemas/config.schema.yaml), as a dict."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _fill_defaults(config: dict, schema: dict) -> None:
    """Insert the schema's `default` for every missing key, recursively."""
    for key, sub in schema.get("properties", {}).items():
        if key not in config and "default" in sub:
            config[key] = copy.deepcopy(sub["default"])
        if isinstance(config.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(config[key], sub)


def _key_path(error: jsonschema.ValidationError) -> str:
    return _format_path(tuple(error.absolute_path))


def _format_path(path: tuple) -> str:
    """A key's path as the messages write it: parity.windows, pred_lens[1]."""
    parts = ""
    for step in path:
        parts += f"[{step}]" if isinstance(step, int) else (f".{step}" if parts else str(step))
    return parts or "(top level)"


def _integer_floats(value, schema: dict, path: tuple = ()) -> Iterable[tuple[tuple, float]]:
    """(path, value) of every float in a key that holds integers only.

    JSON Schema counts 4.0 as an integer, and YAML and Snakemake's --config read `4.0` as a
    float, which then reaches range() and the slices: such a value is refused, never guessed at.
    """
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _integer_floats(item, schema.get("properties", {}).get(key, {}), (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _integer_floats(item, schema.get("items", {}), (*path, index))
    elif isinstance(value, float) and "integer" in _types(schema) and "number" not in _types(schema):
        yield path, value


_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
COMMAND_LINE = "--config"
DATE_DIRECTIVES = set("aAwdbBmyYHIpMSfzjUWGuV%")  # strftime codes a date column can be parsed with


def _schema_at(schema: dict, path: tuple) -> dict:
    """The sub-schema that describes the value at `path` (dict keys and list indices); {} when none."""
    for part in path:
        if isinstance(part, int):
            schema = schema.get("items", {})
        else:
            schema = schema.get("properties", {}).get(part, {})
    return schema


def _types(schema: dict) -> set[str]:
    kind = schema.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def _typed(text: str, schema: dict):
    """A command-line string as the number (or null, or boolean) its key holds, when that reading is the only one."""
    types = _types(schema)
    if "string" in types or not types:
        return text  # a text key (or an enum): the string is meant
    if "null" in types and text in ("null", "~"):
        return None
    if "boolean" in types and text.lower() in ("true", "false"):  # Snakemake reads only True/False as booleans
        return text.lower() == "true"
    if "integer" in types and _INTEGER.fullmatch(text):
        return int(text)
    if "number" in types and _NUMBER.fullmatch(text):
        return float(text)
    return text  # not a plain number: the schema names the key and the type


def _coerce(value, path: tuple, config: dict, schema: dict) -> None:
    """Walk the command-line values and replace, in `config`, strings that are plain numbers of a numeric key."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            _coerce(item, (*path, key), config, schema)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _coerce(item, (*path, index), config, schema)
    elif isinstance(value, str):
        typed = _typed(value, _schema_at(schema, path))
        if typed is not value and _lookup(config, path):  # --config has the last word, so it is there
            target = config
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = typed


def _lookup(tree, path: tuple) -> bool:
    """Whether `tree` (a loaded config) sets the value at `path`."""
    for part in path:
        if isinstance(part, int):
            if not isinstance(tree, list) or part >= len(tree):
                return False
        elif not isinstance(tree, Mapping) or part not in tree:
            return False
        tree = tree[part]
    return True


def config_origins(configfiles: Iterable, cli_configfiles: Iterable, command_line: Mapping | None) -> list:
    """Where the config came from, lowest precedence first, as Snakemake merges it.

    Args:
        configfiles: every config file Snakemake read (`workflow.configfiles`: the
            `--configfile` ones and the Snakefile's `configfile:`).
        cli_configfiles: those given with `--configfile` (`workflow.config_settings.configfiles`),
            which override the Snakefile's.
        command_line: the `--config` values (`workflow.config_settings.config`), which override all.
    Returns:
        [(label, loaded values)], lowest precedence first; the label is a path or "--config".
    """
    cli = [Path(path).absolute() for path in cli_configfiles]
    files = [path for path in configfiles if Path(path).absolute() not in cli] + list(cli_configfiles)
    origins = []
    for path in files:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            loaded = {}  # Snakemake has read it already; a file it could read but we cannot only loses the label
        origins.append((str(path), loaded))
    if command_line:
        origins.append((COMMAND_LINE, copy.deepcopy(dict(command_line))))
    return origins


def _origin(path: tuple, origins: list, source: str) -> str:
    """The label of the highest-precedence origin that sets `path` (or a parent of it), else `source`."""
    for cut in range(len(path), 0, -1):
        for label, tree in reversed(origins):
            if _lookup(tree, path[:cut]):
                return label
    return source


def _sentence(error: jsonschema.ValidationError, source: str) -> str:
    where = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        prefix = f"{where}." if where != "(top level)" else ""
        return (f"{source}: unknown config key {', '.join(prefix + key for key in extra)}; "
                f"allowed keys there are {', '.join(allowed)} (see config/README.md).")
    if error.validator == "required":
        missing = error.message.split(" is a required")[0]
        return f"{source}: config key {where} is missing {missing}; add it (see config/README.md)."
    if error.validator == "pattern" and error.absolute_path and error.absolute_path[-1] == "name":
        return (f"{source}: config key {where} = {error.instance!r} must be a plain folder name "
                "(letters, digits, '_', '-', '.'; no path separators or '..').")
    if error.validator == "uniqueItems":
        return f"{source}: config key {where} = {error.instance} holds a value twice; list each value once."
    return f"{source}: config key {where} = {error.instance!r} is invalid: {error.message}; see config/README.md."


def _check_date_format(config: dict, source: str) -> None:
    """dataset.date_format must be a strftime pattern with a year, a month and only known codes."""
    pattern = config["dataset"].get("date_format")
    if pattern is None:
        return
    codes = re.findall(r"%(.)", pattern.replace("%%", ""))
    unknown = sorted({code for code in codes if code not in DATE_DIRECTIVES})
    if unknown or not {"Y", "y"} & set(codes) or not {"m", "b", "B"} & set(codes):
        problem = (f"has the unknown code(s) {', '.join('%' + code for code in unknown)}" if unknown
                   else "needs a year (%Y) and a month (%m, %b or %B)")
        raise InputError(f"{source}: config key dataset.date_format = {pattern!r} {problem}; write the dates' "
                         "format as a strftime pattern, such as '%d/%m/%Y %H:%M' (see config/README.md).")


def validate_config(config: dict, source: str = "config", origins: list | None = None) -> dict:
    """Check a config against the schema and complete it.

    Args:
        config: the merged config, as Snakemake hands it to the Snakefile.
        source: what to name when a value's origin is unknown (a file path, or "config").
        origins: `config_origins(...)`: where each value came from, so that an error
            names the config file or `--config` that set the key. Command-line values
            that are plain numbers (or null) in a numeric key are read as such.
    Returns:
        A copy with the schema defaults filled in and dataset.layout made concrete
        (`resolve_layout`: "auto" picks it from dataset.name).
    Raises:
        InputError: the first invalid key, naming it, its value, where it was set and the fix.
    """
    schema = load_schema()
    config = copy.deepcopy(dict(config))
    origins = origins or []
    for label, values in origins:
        if label == COMMAND_LINE:
            _coerce(values, (), config, schema)
    _fill_defaults(config, schema)
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config),
                    key=lambda error: (len(error.absolute_path), str(error.absolute_path)))

    if errors:
        error = errors[0]
        path = tuple(error.absolute_path)
        if error.validator == "required":  # the missing key itself: name every file that could have set it
            path = (*path, error.message.split("'")[1])
        raise InputError(_sentence(error, _origin(path, origins, source)))
    for path, value in _integer_floats(config, schema):  # past the schema: integral, such as 4.0
        raise InputError(f"{_origin(path, origins, source)}: config key {_format_path(path)} = {value!r} must be "
                         f"an integer; write {int(value)}, without the decimal point (see config/README.md).")
    _check_date_format(config, _origin(("dataset", "date_format"), origins, source))
    config["dataset"]["layout"] = resolve_layout(config["dataset"]["layout"], config["dataset"]["name"])
    return config


def with_defaults(config: dict) -> dict:
    """A config the code builds itself, completed as validate_config completes it, without the schema check.

    For `make gpu-check`, which must run where jsonschema is not installed (a GPU node with the
    site's packages): the schema's defaults filled in and dataset.layout made concrete. A config a
    user wrote goes through validate_config.

    Args:
        config: a config whose keys and values the schema accepts.
    Returns:
        A completed copy.
    """
    config = copy.deepcopy(dict(config))
    _fill_defaults(config, load_schema())
    config["dataset"]["layout"] = resolve_layout(config["dataset"]["layout"], config["dataset"]["name"])
    return config


DEFAULT_CONFIG = "config/config.yaml"  # the Snakefile's `configfile:`, relative to the working directory


def read_config_file(path: Path) -> dict:
    """The raw mapping of one YAML config file.

    Args:
        path: the YAML file.
    Returns:
        Its mapping, unvalidated ({} for an empty file).
    Raises:
        InputError: the file is missing, not YAML, or not a mapping.
    """
    if not path.is_file():
        raise InputError(f"{path}: config file not found; pass an existing --configfile.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the syntax.") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a config file holds keys and values (a YAML mapping), not a "
                         f"{type(raw).__name__}; see config/README.md.")
    return raw


def _merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, nested mappings merged key by key, anything else replaced
    (what Snakemake's update_config does with --configfile)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_command_line(entries: list[str]) -> dict:
    """`--config KEY=VALUE ...` read exactly as Snakemake reads it (snakemake.cli.parse_config).

    Args:
        entries: the words after --config, e.g. ["limit_windows=4", "pred_lens=[24, 48]"].
    Returns:
        The nested mapping they set (numbers read as numbers, lists and mappings as YAML
        whose items stay text, as Snakemake hands them over; validate_config types those).
    Raises:
        InputError: an entry is not KEY=VALUE or its key is not a name, naming the entry.
    """
    from snakemake.cli import parse_config  # here: a second of imports, only when --config is given

    for entry in entries:
        try:
            parse_config([entry])
        except ValueError as error:
            reason = str(error).split(". (")[0].rstrip(".")
            raise InputError(f"{COMMAND_LINE} {entry!r} is not KEY=VALUE ({reason}); every word after {COMMAND_LINE} "
                             "up to the next option is read as a config entry, so put targets before it "
                             "(README.md, \"Quick start\").") from None
    return parse_config(entries)


def load_run_config(configfiles: list[str] | None = None, default: str = DEFAULT_CONFIG,
                    command_line: list[str] | None = None) -> dict:
    """The config a `snakemake --configfile ... --config ...` run in the current directory would use.

    Snakemake reads the Snakefile's `configfile:` (config/config.yaml, relative to the
    working directory) when it exists, then each --configfile on top of it; a file that
    sets only a few keys keeps the others; `--config` values go on top of all. The schema's
    defaults fill the rest.

    Args:
        configfiles: the --configfile paths, in order; None or [] for the default alone.
        default: the Snakefile's config file.
        command_line: the --config entries (KEY=VALUE), typed and checked as Snakemake's
            (`parse_command_line`, then validate_config's reading of command-line values).

    Returns:
        The validated config (config.validate_config), defaults filled in.

    Raises:
        InputError: a file is missing or not YAML, there is no config at all, an entry of
            --config is not KEY=VALUE, or a key is invalid (naming the file or --config).
    """
    paths = ([Path(default)] if Path(default).is_file() else []) + [Path(path) for path in configfiles or []]
    if not paths:
        raise InputError(f"{default} is not in {Path.cwd()}; run from the workflow's folder or pass --configfile.")
    merged: dict = {}
    origins = []  # so that an invalid value names the file that set it
    for path in paths:
        loaded = read_config_file(path)
        origins.append((str(path), loaded))
        merged = _merge(merged, loaded)
    if command_line:
        overrides = parse_command_line(command_line)
        origins.append((COMMAND_LINE, copy.deepcopy(overrides)))
        merged = _merge(merged, overrides)
    return validate_config(merged, " + ".join(map(str, paths)), origins)


def load_config_file(path: str | Path) -> dict:
    """One config file on its own (no config/config.yaml beneath it), validated, defaults filled in.

    Raises:
        InputError: as read_config_file and validate_config.
    """
    return validate_config(read_config_file(Path(path)), str(path))


def config_hash(config: dict, keys: list[str] | None = None) -> str:
    """The first 16 hex digits of the sha256 of the config's sorted JSON, of `keys` only when given
    (for metadata and manifests)."""
    part = {key: config[key] for key in keys} if keys else config

    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]
