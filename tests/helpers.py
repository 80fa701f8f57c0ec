from __future__ import annotations

import csv
from pathlib import Path

SHARED_STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb"


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
