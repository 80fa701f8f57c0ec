"""STS-B from the Hub vs the stsbenchmark files, pair by pair: are they the same data in the same order?

raftlm reads ``--dataset stsb`` from ``--data-dir`` (the files) or, without it, from the Hub copy
``sentence-transformers/stsb`` (``data.STSB_HUB_ID``); the splits are the same only if the pairs and
their order are. For each Hub copy in ``data.STSB_HUB_COPIES`` and each part (train, dev, test) this
prints the counts: pairs on each side, pairs equal at the same position (same sentences, scores within
1e-9 after rescaling onto 0-5), sentence and score mismatches, and pairs equal in some other position.
Writes benchmarks/results/stsb_sources.json; needs the Hub (or its copies in the ``datasets`` cache).

    python benchmarks/stsb_sources.py --data-dir ../shared/data/stsb
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from raftlm.data import STSB_FILES, STSB_HUB_COPIES, read_stsb, stsb_from_hub
from raftlm.io import write_json

RESULTS = Path(__file__).parent / "results" / "stsb_sources.json"
TOLERANCE = 1e-9  # 0.76 * 5 is 3.8000000000000003: equal scores, not equal floats


def _key(row: dict) -> tuple[str, str]:
    return row["sentence1"], row["sentence2"]


def compare(local: list[dict], hub: list[dict]) -> dict:
    """Counts for one part: how many pairs agree at the same position, and how the others differ."""
    same = sentences = scores = 0
    for a, b in zip(local, hub, strict=False):
        if _key(a) != _key(b):
            sentences += 1
        elif abs(float(a["score"]) - float(b["score"])) > TOLERANCE:
            scores += 1
        else:
            same += 1
    unmatched = Counter(_key(r) for r in local) - Counter(_key(r) for r in hub)
    return {
        "local": len(local),
        "hub": len(hub),
        "equal_in_place": same,
        "sentence_mismatches": sentences,
        "score_mismatches": scores,
        "local_pairs_missing_from_hub": sum(unmatched.values()),
        "identical": same == len(local) == len(hub),
    }


def compare_copy(data_dir: Path, hub_id: str) -> dict:
    parts = tuple(STSB_FILES)
    hub, source = stsb_from_hub(parts, hub_id)
    report = {p: compare(read_stsb(data_dir / STSB_FILES[p]), hub[p]) for p in parts}
    return {"source": source, "parts": report, "identical": all(r["identical"] for r in report.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the stsbenchmark folder (sts-train.csv, ...)")
    args = parser.parse_args()
    out = {}
    for hub_id in STSB_HUB_COPIES:
        try:
            out[hub_id] = compare_copy(Path(args.data_dir), hub_id)
        except Exception as err:  # noqa: BLE001 - offline or a changed copy: say which, go on
            out[hub_id] = {"error": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"}
            print(f"{hub_id}: not compared ({out[hub_id]['error']})", file=sys.stderr)
            continue
        for part, r in out[hub_id]["parts"].items():
            print(
                f"{hub_id} {part}: local {r['local']}, hub {r['hub']}, equal in place {r['equal_in_place']}, "
                f"sentence mismatches {r['sentence_mismatches']}, score mismatches {r['score_mismatches']}, "
                f"local pairs missing from the hub {r['local_pairs_missing_from_hub']}"
            )
    if all("error" in r for r in out.values()):
        return 1  # nothing compared: no results file
    write_json(RESULTS, out)
    return 0 if all(r.get("identical") for r in out.values()) else 3


if __name__ == "__main__":
    sys.exit(main())
