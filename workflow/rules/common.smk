# Config validation, paths and helpers shared by every stage.
import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(workflow.basedir) / "workflow")
)  # the package, even before `pip install -e .`

from timekd_embed.config import validate_config
from timekd_embed.errors import InputError
from timekd_embed.windows import SPLITS


def fail(message):
    """One sentence on stderr and a non-zero exit, instead of a traceback."""
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


try:
    _valid = validate_config(
        config, " + ".join(map(str, workflow.configfiles)) or "config"
    )
except InputError as error:
    fail(error)
config.clear()
config.update(_valid)

NAME = config["dataset"]["name"]
RESULTS = f"results/{NAME}"
WINDOWS = f"{RESULTS}/windows/{{split}}.parquet"
SCA = f"{RESULTS}/sca.safetensors"
EMBEDDINGS = f"{RESULTS}/embeddings/{{pred_len}}/{{split}}.safetensors"
EMBEDDING_STATS = f"{RESULTS}/embeddings/{{pred_len}}/{{split}}.json"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
ENV = "../../envs/timekd-embed.yaml"


wildcard_constraints:
    split="|".join(SPLITS),
    pred_len=r"\d+",


def input_csv():
    """The CSV, or one clear sentence when it is missing and the windows must be made."""
    csv = config["dataset"]["csv"]
    have_windows = all(Path(WINDOWS.format(split=s)).exists() for s in SPLITS)
    if not Path(csv).is_file() and not have_windows:
        fail(
            f"{csv} not found: put weather.csv there (from the Autoformer / Time-Series-Library "
            "dataset collection, sha256 34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63) "
            "or set dataset.csv in the config."
        )
    return csv


def all_embeddings():
    return expand(EMBEDDINGS, pred_len=config["pred_lens"], split=config["splits"])


CSV = input_csv()
