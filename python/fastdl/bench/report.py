"""Benchmark output: a line per case while running, then a JSON file of every measurement and a
Markdown report (table and summary) per op family."""

from __future__ import annotations

import json
import math
from pathlib import Path


def case_line(i: int, total: int, r: dict) -> str:
    head = f"[{i:>3}/{total}] {r['network']:<9} {r['layer']:<13} b{r['batch']:<4} {r['mode']:<22}"
    head += f" {r['algorithm']:<9}" if r.get("algorithm") else ""
    if r.get("error"):
        return f"{head} ERROR: {r['error']}"
    head += f" {r['baseline']:<10}" if r.get("baseline", "torch") != "torch" else ""
    rate = (f"{r['fastdl_gflops']:7.1f} GFLOP/s (torch {r['torch_gflops']:.1f})" if "fastdl_gflops" in r
            else f"{r['fastdl_gbps']:7.1f} GB/s ({100 * r['fraction_of_ceiling']:3.0f}%)")
    return f"{head} torch {r['torch_ms']:9.3f} ms  fastdl {r['fastdl_ms']:9.3f} ms  {r['speedup']:6.2f}x  {rate}"


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
    ]
    compute = any("fastdl_gflops" in r for r in results)
    if compute:
        lines[-1:-1] = ["- GFLOP/s: 2 x multiply-adds of the convolutions the step computes (forward, and one per "
                        "gradient taken); baseline: what torch ran"]
        lines += ["| network | layer | op | shape (N,C,H,W) | dtype | mode | baseline | torch ms | fastdl ms | speedup "
                  "| fastdl GFLOP/s | torch GFLOP/s |", "|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    else:
        lines += ["| network | layer | shape (N,C,H,W) | dtype | mode | torch ms | fastdl ms | speedup | fastdl GB/s "
                  "| % of copy |", "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        shape = "x".join(str(v) for v in r["input_shape"])
        head = f"| {r['network']} | {r['layer']} | " + (f"{r['op']} | " if compute else "") + \
            f"{shape} | {r['dtype']} | {r['mode']} | " + (f"{r.get('baseline', 'torch')} | " if compute else "")
        if r.get("error"):
            lines.append(f"{head}ERROR: {r['error']} | | | | |")
        elif compute:
            lines.append(f"{head}{r['torch_ms']:.3f} | {r['fastdl_ms']:.3f} | {r['speedup']:.2f} | "
                         f"{r['fastdl_gflops']:.1f} | {r['torch_gflops']:.1f} |")
        else:
            lines.append(f"{head}{r['torch_ms']:.3f} | {r['fastdl_ms']:.3f} | {r['speedup']:.2f} | "
                         f"{r['fastdl_gbps']:.1f} | {100 * r['fraction_of_ceiling']:.0f}% |")
    lines += ["", "## Summary", ""] + [f"- {line}" for line in summary_lines(family, s)]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, name: str, family: str, env: dict, results: list[dict]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    s = summary(results)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps({"environment": env, "summary": s, "results": results}, indent=1))
    md_path.write_text(markdown(family, env, results, s))
    return [json_path, md_path]
