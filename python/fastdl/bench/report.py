"""Benchmark output: a line per case while running, then a JSON file of every measurement and a
Markdown report (table and summary) per op family."""

from __future__ import annotations

import json
import math
from pathlib import Path


def case_line(i: int, total: int, r: dict) -> str:
    head = f"[{i:>3}/{total}] {r['network']:<9} {r['layer']:<13} b{r['batch']:<4} {r['mode']:<22}"
    if r.get("error"):
        return f"{head} ERROR: {r['error']}"
    return (f"{head} torch {r['torch_ms']:9.3f} ms  fastdl {r['fastdl_ms']:9.3f} ms  "
            f"{r['speedup']:6.2f}x  {r['fastdl_gbps']:7.1f} GB/s ({100 * r['fraction_of_ceiling']:3.0f}%)")


def summary(results: list[dict]) -> dict:
    """Geometric mean of the speedups, the best and the worst case, per mode and overall."""
    timed = [r for r in results if not r.get("error")]
    out = {}
    for mode in sorted({r["mode"] for r in timed}) + ["all"]:
        rows = [r for r in timed if mode in ("all", r["mode"])]
        if not rows:
            continue
        best = max(rows, key=lambda r: r["speedup"])
        worst = min(rows, key=lambda r: r["speedup"])
        out[mode] = {
            "cases": len(rows),
            "geomean_speedup": math.exp(sum(math.log(r["speedup"]) for r in rows) / len(rows)),
            "best": {"case": best["id"], "speedup": best["speedup"]},
            "worst": {"case": worst["id"], "speedup": worst["speedup"]},
            "slower_than_torch": sum(r["speedup"] < 1.0 for r in rows),
        }
    out["errors"] = [f"{r['id']}: {r['error']}" for r in results if r.get("error")]
    return out


def summary_lines(family: str, s: dict) -> list[str]:
    lines = []
    for mode, m in s.items():
        if mode == "errors":
            continue
        lines.append(
            f"{family} {mode}: geomean speedup {m['geomean_speedup']:.2f}x over {m['cases']} cases; "
            f"best {m['best']['speedup']:.2f}x ({m['best']['case']}), worst {m['worst']['speedup']:.2f}x "
            f"({m['worst']['case']}); {m['slower_than_torch']} slower than torch")
    lines += [f"{family} ERROR {e}" for e in s["errors"]]
    return lines


def markdown(family: str, env: dict, results: list[dict], s: dict) -> str:
    lines = [
        f"# fastdl vs PyTorch: {family}",
        "",
        f"- device: {env['device_name']} ({env['device']}), {env['threads']} CPU threads for both sides"
        if env["device"] == "cpu" else f"- device: {env['device_name']} ({env['device']})",
        f"- torch {env['torch']}, fastdl commit {env['commit']}, {env['date']}",
        f"- measured copy bandwidth (ceiling): {env['copy_gbps']:.1f} GB/s",
        "- speedup = torch time / fastdl time (above 1 means fastdl is faster); medians of "
        "interleaved samples; GB/s counts the fewest bytes each step must move",
        "",
        "| network | layer | shape (N,C,H,W) | dtype | mode | torch ms | fastdl ms | speedup | fastdl GB/s | % of copy |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        shape = "x".join(str(v) for v in r["input_shape"])
        if r.get("error"):
            lines.append(f"| {r['network']} | {r['layer']} | {shape} | {r['dtype']} | {r['mode']} | "
                         f"ERROR: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['network']} | {r['layer']} | {shape} | {r['dtype']} | {r['mode']} | {r['torch_ms']:.3f} | "
            f"{r['fastdl_ms']:.3f} | {r['speedup']:.2f} | {r['fastdl_gbps']:.1f} | "
            f"{100 * r['fraction_of_ceiling']:.0f}% |")
    lines += ["", "## Summary", ""] + [f"- {line}" for line in summary_lines(family, s)]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, name: str, family: str, env: dict, results: list[dict]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    s = summary(results)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps({"environment": env, "summary": s, "results": results}, indent=1))
    md_path.write_text(markdown(family, env, results, s))
    return [json_path, md_path]
