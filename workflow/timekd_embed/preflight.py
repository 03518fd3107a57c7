"""`timekd-embed preflight`: will the configured job fit, how long will it take, and do the
precision or a layer split change the embeddings? Measured in minutes on a few real windows
per horizon, with the configured model, precision, placement and devices, before the
day-long run (`make preflight`, or the Snakemake target results/<name>/preflight.{json,md}).

This module coordinates: every number comes from the extraction's own code (split_job,
teacher, extract), the parity stage's statistics (parity) and the probes in diagnostics.py;
report.py renders the Markdown. It never raises for a failed check: each adds one sentence
to the report's failures, and `main` exits 1 with the first.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .checkpoint import check_model, checkpoint_matches, weights
from .devices import resolve_devices
from .diagnostics import (
    Horizon,
    attention_backends,
    device_usable,
    job_name,
    key_padding,
    machine,
    measure_job,
    one_batch,
    prefetch_pinning,
    replicas_check,
)
from .errors import InputError
from .extract import embed_horizons
from .families import context_length
from .lm import NonFiniteState
from .parity import compare, layer_split_check
from .placement import plan_placement
from .report import preflight_markdown
from .sampling import sample_windows
from .sca import save_sca
from .settings import Runtime, Settings
from .split_job import prepare_split
from .store import write_json, write_text
from .table import load_csv
from .teacher import load_teacher
from .windows import split_windows

log = logging.getLogger(__name__)

NO_CUDA = "not run: no CUDA device"


def load_horizons(config: dict, tokenizer, context: int, n_windows: int) -> list[Horizon]:
    """Every configured horizon, prepared on every configured split as the extraction prepares it
    (split_job.prepare_split: the same windows, the same context check on every window).

    Args:
        config: the validated config; tokenizer: the model's; context: its context length.
        n_windows: sample windows per horizon, spread over the first split's windows that exist at
            every horizon (fewer when fewer exist).
    Raises:
        InputError: the CSV cannot be read, a split too short, or a prompt does not fit the context.
    """
    from .cadence import check_cadence

    data = config["dataset"]
    layout = data["layout"]  # concrete: validate_config resolves "auto"
    table = load_csv(data["csv"], target=data["target"], layout=layout, date_format=data["date_format"])
    check_cadence(table, data["name"], layout)  # the windows stage's own check of the file
    splits = split_windows(table, layout, config["seq_len"])
    settings = Settings.from_config(config)
    jobs = {}
    for split in config["splits"]:
        log.info("preflight: building and checking the prompts of split %s at every horizon", split)
        jobs[split] = prepare_split(tokenizer, splits[split], settings, config["pred_lens"], context)
    first = jobs[config["splits"][0]]
    common = min(first.windows(pred_len) for pred_len in config["pred_lens"])
    sample = sample_windows({first.split: common}, n_windows)[first.split]
    return [Horizon(pred_len, first.prompts[pred_len], sample,
                    {split: job.windows(pred_len) for split, job in jobs.items()},
                    max(job.longest[pred_len] for job in jobs.values()))
            for pred_len in config["pred_lens"]]


def precision_parity(config, settings, sca_path, devices, placement, device_map, batch_tokens, horizons, embeddings,
                     failures) -> dict:
    """The configured precision against fp32 on the same sample windows and devices (parity.compare),
    for the configured model: the workflow's parity stage recomputes its sample the same way.

    Args:
        config: the validated config (parity.min_cosine); settings: the job's settings.
        sca_path, devices, placement, device_map: as load_teacher; batch_tokens: the configured budget or None.
        horizons: the horizons; embeddings: pred_len -> the sample's (S, N, d) in the configured precision.
        failures: the run's failure sentences, appended to.
    Returns:
        pred_len -> parity.compare's statistics plus windows_compared, or {"fp32": sentence}.
    """
    if settings.precision == "fp32":
        return {"fp32": "trivially exact: the configured precision is fp32"}
    log.info("preflight: the same sample windows in fp32")
    try:
        fp32 = load_teacher(dataclasses.replace(settings.teacher, precision="fp32"), sca_path, devices, placement,
                            device_map, batch_tokens, max(horizon.longest_prompt for horizon in horizons))
    except InputError as error:   # the plan's sentence: the fp32 copy does not fit these devices
        failures.append(f"the parity check's fp32 reference does not fit: {error}")
        return {"fp32": f"not run: {error}"}
    budget = fp32.batch_tokens
    result = {}
    # One fp32 job over every measured horizon: the sample windows are the same at all of them.
    measured = [horizon for horizon in horizons if horizon.pred_len in embeddings]
    prompts = {horizon.pred_len: horizon.prompts for horizon in measured}
    reference = embed_horizons(fp32, prompts, horizons[0].sample, settings.fidelity, budget)[0] if measured else {}
    for horizon in measured:
        stats, _ = compare(embeddings[horizon.pred_len], reference[horizon.pred_len])
        stats["windows_compared"] = horizon.sample.tolist()
        result[horizon.pred_len] = stats
        if not stats["cosine_min"] >= config["parity"]["min_cosine"]:
            failures.append(f"pred_len {horizon.pred_len}: the lowest cosine similarity between {settings.precision} "
                            f"and fp32 embeddings is {stats['cosine_min']:.6f}, under parity.min_cosine = "
                            f"{config['parity']['min_cosine']}; use precision bf16 or fp32.")
    del fp32                      # its memory goes back before the GPU checks load other copies
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def gpu_checks(settings, sca_path, teacher, devices, device_map, horizon, budget, failures) -> dict:
    """The GPU checks, each guarded: one that raises (a CUDA error, a kernel that refuses) is a failed
    check with its first line, not a traceback. Those that need CUDA or a second device say so.

    Args:
        settings, sca_path: as load_teacher; teacher: the loaded teacher.
        devices, device_map: the job's devices and an explicit layer split (tests) or None.
        horizon: the first horizon; budget: batch_tokens.
        failures: the run's failure sentences, appended to.
    Returns:
        check name -> its result, or a sentence saying why it did not run or how it failed.
    """
    cuda = any(device.startswith("cuda") for device in devices)
    log.info("preflight: GPU checks on %s", ", ".join(devices))
    try:
        one, alone = teacher if teacher.placement == "single" else load_teacher(
            settings.teacher, sca_path, devices[:1], batch_tokens=budget), None
    except InputError as error:   # too large for one device: the first block's checks run on the split model
        one, alone = teacher, f"not run: {error}"
    batch = one_batch(one, horizon, settings.fidelity, budget)
    runs = {
        "attention_backends": partial(attention_backends, one.model, batch, devices[0], settings.precision),
        "key_padding": partial(key_padding, one.model, batch, devices[0]) if cuda else None,
        "prefetch_pinning": partial(prefetch_pinning, horizon, settings.fidelity, budget) if cuda else None,
    }
    several = alone if len(devices) >= 2 else (
        NO_CUDA if not cuda else f"not run: the job holds one device ({devices[0]})")
    if several is None:
        runs["replica_scaling"] = partial(replicas_check, settings, sca_path, teacher, one, devices, horizon, budget)
        runs["model_parallel"] = partial(
            layer_split_check, settings.teacher, sca_path, devices, [horizon.prompts], [horizon.sample],
            settings.fidelity, budget, one=one, device_map=device_map,
            split=teacher if teacher.placement == "model_parallel" else None)
    checks = {}
    for name, run in runs.items():
        if run is None:
            checks[name] = NO_CUDA
            continue
        try:
            checks[name] = run()
        except (NonFiniteState, InputError) as error:  # the extraction's own finding, already a failure above
            checks[name] = f"not run: {error}"
        except (RuntimeError, ValueError) as error:    # torch's errors for kernels and devices
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            checks[name] = f"failed: {first}"
            failures.append(f"GPU check {name} could not run on {', '.join(devices)} ({first}); report it with "
                            "this preflight output.")
    if several is not None:
        checks["replica_scaling"] = checks["model_parallel"] = several
    for name, value in checks.items():
        rounding = [(where, result) for where, result in _rounding_results(value) if not result["within_rounding"]]
        if rounding:
            where, worst = rounding[0]
            failures.append(f"{name.replace('_', ' ')} ({where}) differs by {worst['max_abs_difference']:.3g}, more "
                            f"than float rounding ({worst['tolerance']:.3g}); report it with this preflight output.")
    return checks


def check_outcome(value) -> str:
    """One GPU check's result (a value of gpu_checks') in a word: "ok", "failed" or "not run".
    A result fails when a comparison in it is more than float rounding; what a check only reports
    (a backend that refused the batch, padding_helps) does not fail it."""
    if isinstance(value, str):
        return "failed" if value.startswith("failed") else "not run"
    return "failed" if any(not result["within_rounding"] for _, result in _rounding_results(value)) else "ok"


def _rounding_results(value, where: str = "") -> list[tuple[str, dict]]:
    """Every within_rounding result nested in a check's result, with where it sits."""
    if not isinstance(value, dict):
        return []
    if "within_rounding" in value:
        return [(where, value)]
    return [result for key, nested in value.items()
            for result in _rounding_results(nested, f"{where}.{key}".strip("."))]


# --------------------------------------------------------------------------- the run

def run_preflight(config: dict, n_windows: int = 8, devices: list[str] | None = None,
                  device_map: dict | None = None, workdir: str | Path | None = None) -> dict:
    """All checks on `config` (validated, defaults filled); never raises for a failed check.

    Args:
        config: as config.load_config_file returns it.
        n_windows: sample windows per horizon (of the first configured split).
        devices: the job's devices; None resolves them as the extraction does (device, gpus_per_job).
        device_map: an explicit accelerate map for the model-parallel check (tests: two CPU entries).
        workdir: where the seeded SCA weights go (a temporary folder by default).
    Returns:
        The report: machine, horizons (speed, memory, ETA), parity, gpu_checks, failures, passed.
    """
    began = time.perf_counter()
    devices = devices or resolve_devices(config["device"], config["gpus_per_job"])
    failures: list[str] = []  # one sentence per failed check; any makes preflight exit 1
    report = {"config": {key: config[key] for key in ("precision", "placement", "gpus_per_job", "batch_tokens",
                                                 "pred_lens", "share_horizons", "splits", "fidelity")}
              | {"model": config["model"]},
              "machine": machine(devices), "windows_asked": n_windows, "windows_per_horizon": 0, "failures": failures}
    try:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            _run_checks(config, n_windows, devices, device_map, Path(tmp), report, failures)
    except InputError as error:        # a check that stops the rest (the model cannot load, ...)
        failures.append(str(error))
    report["failures"] = list(failures)
    report["passed"] = not failures
    if config["precision"] != "fp32" and not any(device.startswith("cuda") for device in devices):
        report.setdefault("notes", []).append(
            f"{config['precision']} on the CPU is emulated and slow: use precision fp32 there.")
    report["wall_s"] = time.perf_counter() - began
    return report


def _run_checks(config, n_windows, devices, device_map, tmp: Path, report: dict, failures: list[str]) -> None:
    for device in dict.fromkeys(devices):
        if (problem := device_usable(device)) is not None:
            failures.append(problem)
    if failures:
        return
    name, revision = config["model"]["name_or_path"], config["model"]["revision"]
    # The model's files first (headers only): a damaged download fails in a second, before every
    # split of every horizon is tokenized.
    log.info("preflight: checking the model files of %s", name)
    model_config, tokenizer = check_model(name, revision)
    horizons = load_horizons(config, tokenizer, context_length(model_config), n_windows)
    report["context"] = context_length(model_config)
    report["windows_per_horizon"] = len(horizons[0].sample)
    if len(horizons[0].sample) < n_windows:
        report.setdefault("notes", []).append(
            f"{n_windows} sample windows per horizon were asked, but split {config['splits'][0]} has "
            f"{len(horizons[0].sample)} that exist at every horizon: those were measured.")
    sca_path = tmp / "sca.safetensors"
    settings, runtime = Settings.from_config(config), Runtime.from_config(config)
    save_sca(sca_path, horizons[0].prompts.n_vars, model_config.hidden_size, config["seed"])

    # The plan from config.json, recorded even when it refuses (load_teacher then raises its sentence).
    longest = max(horizon.longest_prompt for horizon in horizons)
    report["plan"] = plan_placement(model_config, settings.precision, settings.layers, devices,
                                    "model_parallel" if device_map else runtime.placement, runtime.batch_tokens,
                                    longest, name=f"model {name}").as_dict()
    log.info("preflight: loading the teacher on %s (%s)", ", ".join(devices), report["plan"]["reason"])
    teacher = load_teacher(settings.teacher, sca_path, devices, runtime.placement, device_map, runtime.batch_tokens,
                           longest)
    budget = teacher.batch_tokens
    report["placement"] = teacher.placement
    if (problem := checkpoint_matches(teacher.model, weights(name, revision), name)) is not None:
        failures.append(problem)
    measured, embeddings = [], {}
    # The jobs the workflow runs: one for every horizon (share_horizons), or one per horizon.
    for job in [horizons] if config["share_horizons"] else [[horizon] for horizon in horizons]:
        try:
            figures, sample_embeddings = measure_job(teacher, job, settings.fidelity, budget)
        except InputError as error:     # the extraction's own sentence (non-finite state, memory)
            failures.append(str(error))
            continue
        except RuntimeError as error:   # a device error on a path never run on this machine before
            failures.append(f"{job_name(job)}: the extraction failed on {', '.join(devices)} "
                            f"({str(error).strip().splitlines()[0]}); report it with this preflight output.")
            continue
        measured.append(figures)
        embeddings |= sample_embeddings
        for P, values in sample_embeddings.items():
            if not np.isfinite(values).all():
                failures.append(f"pred_len {P}: non-finite values (NaN or inf) in the {settings.precision} embeddings "
                                "of the sample windows; use precision bf16 or fp32, or check the weights.")
    report["jobs"] = measured
    report["eta_s"] = sum(figures["eta_s"] for figures in measured)
    report["parity"] = precision_parity(config, settings, sca_path, devices, runtime.placement, device_map,
                                        runtime.batch_tokens, horizons, embeddings, failures)
    report["gpu_checks"] = gpu_checks(settings, sca_path, teacher, devices, device_map, horizons[0], budget, failures)


def write_report(report: dict, folder: str | Path) -> tuple[Path, Path]:
    """Write preflight.json and preflight.md into `folder` (atomic writes, store.py).

    Args:
        report: run_preflight's report; folder: results/<name> as a rule.
    Returns:
        (the JSON path, the Markdown path).
    """
    folder = Path(folder)
    json_path, md_path = folder / "preflight.json", folder / "preflight.md"
    write_json(json_path, report)
    write_text(md_path, preflight_markdown(report))
    return json_path, md_path


def require_passed(report: dict, md_path: str | Path) -> None:
    """Fail with the first failed check's sentence when any check failed.

    Args:
        report: run_preflight's report; md_path: the Markdown report, named in the message.
    Raises:
        InputError: report["failures"] is not empty.
    """
    failures = report["failures"]
    if failures:
        more = f" ({len(failures) - 1} more in {md_path})" if len(failures) > 1 else f" (report: {md_path})"
        raise InputError(f"preflight failed: {failures[0].rstrip('.')}{more}.")


@contextmanager
def held_gpus(config: dict):
    """Hold the job's GPUs as an extraction job does (leases.py), from before CUDA starts to the
    end of the `with` block; say where they came from.

    Args:
        config: the validated config (device, gpus_per_job).
    Yields:
        A dict for the report: source and CUDA_VISIBLE_DEVICES ids.
    """
    from .leases import lease_gpus
    if config["device"] == "cpu":
        yield {"source": "none: device cpu"}
        return
    scheduled = os.environ.get("CUDA_VISIBLE_DEVICES")
    with lease_gpus(config["gpus_per_job"]) or nullcontext() as lease:
        if lease is not None:
            among = "" if scheduled is None else f" among the scheduler's CUDA_VISIBLE_DEVICES={scheduled}"
            yield {"source": f"lease (file locks){among}", "ids": os.environ["CUDA_VISIBLE_DEVICES"]}
        elif scheduled is not None:
            yield {"source": "scheduler (CUDA_VISIBLE_DEVICES)", "ids": scheduled}
        else:
            yield {"source": "none: no GPU on this node"}


def main(config: dict, n_windows: int = 8, out: str | Path | None = None) -> dict:
    """`timekd-embed preflight`: run, print the Markdown report, write results/<name>/preflight.{json,md}.

    Args:
        config: the validated config (config.load_run_config), defaults filled in.
        n_windows: sample windows per horizon.
        out: the report's folder; None for results/<dataset.name>.
    Returns:
        The report (run_preflight).
    Raises:
        InputError: any check failed (the first failure's sentence; the report is written first).
    """
    if n_windows < 1:
        raise InputError(f"--windows {n_windows}: give at least 1 window per horizon.")
    with held_gpus(config) as held:
        report = run_preflight(config, n_windows)
    report["machine"]["held_gpus"] = held
    _, md_path = write_report(report, out or Path("results") / config["dataset"]["name"])
    print(preflight_markdown(report), end="")
    require_passed(report, md_path)
    return report
