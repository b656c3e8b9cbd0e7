"""python -m fastdl.bench compare OLD.json NEW.json: how each case's speedup changed between two runs
(files written by the runner), with regressions beyond the measured noise flagged.

A run's noise on a case is the relative spread of its speedup: half of (p90 - p10) / median of
fastdl's time plus the same of torch's (the speedup is their ratio). A case regresses when its new
speedup is below the old by more than the two runs' noise together, and by at least MIN_CHANGE; a
case whose check passed before and fails now regresses too. Cases in only one file are listed.

Exit status: 0 when nothing regressed, 1 when a regression was flagged, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MIN_CHANGE = 0.05  # relative: below this, a change is never flagged however quiet both runs were
ENVIRONMENT_KEYS = ("device_name", "threads", "torch", "commit", "date")


def noise(r: dict) -> float:
    return sum((r[f"{side}_timing"]["p90_ms"] - r[f"{side}_timing"]["p10_ms"]) / (2 * r[f"{side}_timing"]["median_ms"])
               for side in ("fastdl", "torch"))


def compare_case(old: dict | None, new: dict | None) -> dict:
    """verdict: regression, improvement, same (within noise), fixed, failing, only old, only new."""
    if old is None or new is None:
        return {"verdict": "only new" if old is None else "only old"}
    if old.get("error") or new.get("error"):
        return {"verdict": {(False, True): "regression", (True, False): "fixed"}.get(
            (bool(old.get("error")), bool(new.get("error"))), "failing")}
    change = new["speedup"] / old["speedup"] - 1
    threshold = max(MIN_CHANGE, noise(old) + noise(new))
    verdict = "regression" if change < -threshold else "improvement" if change > threshold else "same"
    return {"old": old["speedup"], "new": new["speedup"], "change": change, "threshold": threshold,
            "verdict": verdict}


def compare(old: dict, new: dict) -> dict[str, dict]:
    """Every case id of either run (old's order first) with compare_case's verdict."""
    olds, news = ({r["id"]: r for r in run["results"]} for run in (old, new))
    return {case: compare_case(olds.get(case), news.get(case)) for case in dict.fromkeys([*olds, *news])}


def lines(changes: dict[str, dict]) -> list[str]:
    out = []
    for case, c in changes.items():
        if "change" in c:
            out.append(f"{c['verdict']:<11} {case:<60} {c['old']:6.2f}x -> {c['new']:6.2f}x "
                       f"({100 * c['change']:+5.1f}%, noise {100 * c['threshold']:.1f}%)")
        else:
            out.append(f"{c['verdict']:<11} {case}")
    counts = {}
    for c in changes.values():
        counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    return out + ["", ", ".join(f"{n} {verdict}" for verdict, n in counts.items())]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m fastdl.bench compare", description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    args = p.parse_args(argv)
    old, new = (json.loads(path.read_text()) for path in (args.old, args.new))
    for key in ENVIRONMENT_KEYS:
        a, b = old["environment"].get(key), new["environment"].get(key)
        if a != b:
            print(f"{key}: {a} -> {b}")
    changes = compare(old, new)
    print("\n".join(lines(changes)))
    return 1 if any(c["verdict"] == "regression" for c in changes.values()) else 0
