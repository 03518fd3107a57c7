"""Write .test/data/demo.csv: the demo's small synthetic multivariate series (committed; rerun to check).

560 hourly rows from 2024-01-01 00:00 of five variables, the target `OT` last (the
`custom` layout of the Time-Series-Library loaders): daily and weekly cycles, a slow trend
and seeded noise, two decimals. Pure standard library (math, random), so the bytes do not
depend on any package version:

    python .test/make_data.py && git diff --exit-code .test/data/demo.csv
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from pathlib import Path

ROWS = 560
SEED = 2024
START = datetime(2024, 1, 1)
OUT = Path(__file__).resolve().parent / "data" / "demo.csv"


def rows(n: int = ROWS, seed: int = SEED) -> list[str]:
    """The CSV lines, header first: date, temperature, humidity, wind, load, OT."""
    rng = random.Random(seed)
    lines = ["date,temperature,humidity,wind,load,OT"]
    for hour in range(n):
        day = 2 * math.pi * (hour % 24) / 24
        week = 2 * math.pi * (hour % 168) / 168
        temperature = 8 + 6 * math.sin(day - 2.0) + 0.01 * hour + rng.gauss(0, 0.5)
        humidity = 70 - 15 * math.sin(day - 2.0) + rng.gauss(0, 2.0)
        wind = max(0.0, 3 + 1.5 * math.sin(week) + rng.gauss(0, 0.8))
        load = 400 + 120 * math.sin(day - 1.0) + 60 * math.cos(week) + rng.gauss(0, 10)
        target = 20 + 0.05 * load - 0.3 * temperature + rng.gauss(0, 0.7)
        stamp = (START + timedelta(hours=hour)).strftime("%Y-%m-%d %H:%M:%S")
        values = ",".join(f"{v:.2f}" for v in (temperature, humidity, wind, load, target))
        lines.append(f"{stamp},{values}")
    return lines


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(rows()) + "\n")
