"""The pins of pyproject.toml (the one place they are written) for the installs `pip install .`
cannot do by itself: every pin but torch (`make bootstrap SITE_TORCH=1`, next to a site's own
torch) and every pin as wheels for another machine (`make wheelhouse`, for a node without
internet). Standard library only: it runs before any virtual environment exists.

    python tools/pins.py requirements [--extras test,export,demo] [--without-torch]
    python tools/pins.py wheelhouse --dest DIR [--extras ...] [--python-version 3.11]
        [--platform manylinux_2_28_x86_64] [--torch-index URL | --without-torch]
    python tools/pins.py site-torch
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
OLDEST_GLIBC_MINOR = 17   # manylinux2014 = manylinux_2_17: the oldest glibc any pin ships wheels for
SITE_TORCH_LABEL = "site"  # the local version label of the stand-in torch (see placeholder_torch)


def name_of(requirement: str) -> str:
    """The normalized distribution name of a requirement string ("Pandas==3.1.1" -> "pandas")."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", requirement).group(1)).lower()


def pins(extras: list[str], without_torch: bool = False) -> list[str]:
    """The dependencies and the named extras' dependencies as pyproject.toml writes them; torch left out on request."""
    project = tomllib.loads(PYPROJECT.read_text())
    optional = project["project"].get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        sys.exit(f"EXTRAS: no extra {', '.join(unknown)} in {PYPROJECT} (it has {', '.join(sorted(optional))}).")
    found = list(project["project"]["dependencies"])
    for extra in extras:
        found += optional[extra]
    return [line for line in dict.fromkeys(found) if not (without_torch and name_of(line) == "torch")]


def torch_pin() -> str:
    """The pinned torch version ("2.13.0")."""
    torch = [line for line in pins([]) if name_of(line) == "torch"]
    return torch[0].split("==", 1)[1].strip()


def platform_tags(platform: str) -> list[str]:
    """`platform` and every older manylinux tag a machine with its glibc also runs: pip takes
    `--platform manylinux_2_28_x86_64` literally, and numpy ships manylinux_2_27/2_28 wheels,
    older pins manylinux2014 (= 2_17) or manylinux1 ones (pip adds those to manylinux2014)."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    newest, arch = int(match.group(1)), match.group(2)
    return [f"manylinux_2_{minor}_{arch}" for minor in range(newest, OLDEST_GLIBC_MINOR - 1, -1)] + \
        [f"manylinux2014_{arch}"]


def placeholder_torch(folder: Path) -> Path:
    """An empty wheel torch==<pin>+site in `folder`: it stands in for the site's torch while pip
    resolves the pins that require a torch (accelerate), so that neither torch nor its CUDA
    libraries are downloaded; it never stays in the wheelhouse."""
    version, name = f"{torch_pin()}+{SITE_TORCH_LABEL}", "torch"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: pins.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def wheelhouse(dest: Path, extras: list[str], python_version: str, platform: str, torch_index: str | None,
               without_torch: bool) -> None:
    """Download every pin of `extras` (and what they need) as wheels for `python_version` on
    `platform` into `dest`: torch first, from `torch_index` when given, then the rest with
    torch held to the pin (or to the placeholder, without torch)."""
    dest.mkdir(parents=True, exist_ok=True)
    target = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version,
              *(flag for tag in platform_tags(platform) for flag in ("--platform", tag))]
    download = [sys.executable, "-m", "pip", "download", "--dest", str(dest), "--find-links", str(dest), *target]
    with tempfile.TemporaryDirectory() as scratch:
        constraints = Path(scratch) / "constraints.txt"
        if without_torch:
            placeholder = placeholder_torch(Path(scratch))
            constraints.write_text(f"torch==={torch_pin()}+{SITE_TORCH_LABEL}\n")
            download += ["--find-links", scratch]
        else:
            index = ["--index-url", torch_index] if torch_index else []
            subprocess.run([*download, *index, f"torch=={torch_pin()}"], check=True)
            # Then the torch just downloaded, whatever its local label (+cu128, +cpu), for those that need one.
            constraints.write_text(f"torch=={torch_pin()}\n")
        # The build backend too: pip builds the editable install offline, from the wheelhouse.
        requirements = [*tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"],
                        *pins(extras, without_torch=True)]
        while True:
            run = subprocess.run([*download, "-c", str(constraints), *requirements], stderr=subprocess.PIPE,
                                 text=True)
            sys.stderr.write(run.stderr)
            if run.returncode == 0:
                break
            build_wheel(run.stderr, dest)
        if without_torch:
            (dest / placeholder.name).unlink(missing_ok=True)
    print(f"{len(list(dest.glob('*.whl')))} wheels in {dest} for Python {python_version} on {platform}"
          + (" (no torch: the site's)" if without_torch else ""))


def build_wheel(pip_errors: str, dest: Path) -> None:
    """The one way `pip download --only-binary` fails that this fixes: a dependency published as a
    source archive only (snakemake's connection_pool). Build it here into `dest`, where it is found
    next time, if it builds into a wheel for every platform; exit with one sentence otherwise."""
    missing = re.search(r"No matching distribution found for (\S+)", pip_errors)
    if not missing:
        sys.exit("pip download failed (its errors above); the wheelhouse is incomplete.")
    requirement = missing.group(1)
    with tempfile.TemporaryDirectory() as built:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", built, requirement],
                       check=True)
        wheel = next(Path(built).glob("*.whl"))
        if not wheel.name.endswith("-none-any.whl"):
            sys.exit(f"{requirement} has no wheel for the target and builds into {wheel.name} here, which runs "
                     "only on this machine's Python and platform; build it on the target machine.")
        if (dest / wheel.name).exists():
            sys.exit(f"pip cannot use {dest / wheel.name} for {requirement} (its errors above).")
        wheel.rename(dest / wheel.name)
    print(f"built {wheel.name} from its source archive (it publishes no wheel)", file=sys.stderr)


def site_torch() -> None:
    """Say which torch this Python imports, and that it is not the pinned one; exit 1 with one
    sentence where there is none, or where it is one an earlier bootstrap put inside the venv."""
    try:
        torch = metadata.distribution("torch")
    except metadata.PackageNotFoundError:
        sys.exit(f"SITE_TORCH=1: {sys.executable} finds no torch; load the site's torch first (e.g. `module "
                 "load pytorch`, or a Python whose site-packages hold it: PYTHON=/path/to/python3).")
    location = Path(torch.locate_file("")).resolve()
    if location.is_relative_to(Path(sys.prefix).resolve()):
        sys.exit(f"SITE_TORCH=1: the torch {torch.version} that {sys.executable} imports lies in the venv itself "
                 f"({location}), installed there from the pin; remove the venv ({sys.prefix}) and run this again.")
    print(f"WARNING: torch {torch.version} from {location} is the site's, not the pinned torch=={torch_pin()}: "
          "results may differ in the last bits from runs with the pinned torch (every artifact records the "
          "versions it was made with).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("requirements", "wheelhouse"):
        command = commands.add_parser(name)
        command.add_argument("--extras", default="", help="comma-separated extras of pyproject.toml")
        command.add_argument("--without-torch", action="store_true", help="leave torch out (the site's)")
    wheels = commands.choices["wheelhouse"]
    wheels.add_argument("--dest", type=Path, required=True)
    wheels.add_argument("--python-version", default=f"{sys.version_info[0]}.{sys.version_info[1]}")
    wheels.add_argument("--platform", default="manylinux_2_28_x86_64")
    wheels.add_argument("--torch-index", default=None, help="the index torch comes from (default: pip's)")
    commands.add_parser("site-torch")
    args = parser.parse_args(argv)
    extras = [extra.strip() for extra in getattr(args, "extras", "").split(",") if extra.strip()]
    if args.command == "requirements":
        print("\n".join(pins(extras, args.without_torch)))
    elif args.command == "wheelhouse":
        wheelhouse(args.dest, extras, args.python_version, args.platform, args.torch_index or None,
                   args.without_torch)
    else:
        site_torch()


if __name__ == "__main__":
    main()
