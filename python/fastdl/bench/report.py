"""Benchmark output: the run's header, a line per case while running, a summary per op family and one
across families, and per family a JSON file of every measurement and a Markdown report."""

from __future__ import annotations

import json
import math
from pathlib import Path


def flop_unit(device: str) -> tuple[float, str]:
    """GFLOP/s per unit shown: TFLOP/s on the GPU, GFLOP/s on the CPU."""
    return (1e3, "TFLOP/s") if device == "cuda" else (1.0, "GFLOP/s")


def header(env: dict) -> str:
    where = f"{env['device_name']} ({env['device']}, " + (
        f"{env['sm_count']} SMs)" if env["device"] == "cuda" else f"{env['threads']} threads)")
    scale, unit = flop_unit(env["device"])
    matmul = ", ".join(f"{dt} {v / scale:.1f}" for dt, v in env["matmul_gflops"].items())
    return (f"fastdl.bench on {where}, torch {env['torch']}, commit {env['commit']}; ceilings: copy "
            f"{env['copy_gbps']:.1f} GB/s, matmul {matmul} {unit}")


def rate(r: dict, side: str, device: str) -> str:
    """A side's achieved GFLOP/s (TFLOP/s on the GPU) or GB/s."""
    if f"{side}_gflops" in r:
        scale, unit = flop_unit(device)
        return f"{r[f'{side}_gflops'] / scale:.1f} {unit}"
    return f"{r[f'{side}_gbps']:.1f} GB/s"


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.3g}"


def case_line(i: int, total: int, r: dict, device: str) -> str:
    head = f"[{i:>3}/{total}] {r['network']:<9} {r['layer']:<13} b{r['batch']:<4} {r['mode']:<22}"
    head += f" {r['algorithm']:<9}" if r.get("algorithm") else ""
    if r.get("error"):
        return f"{head} ERROR: {r['error']}"
    head += f" {r['baseline']:<10}" if r.get("baseline", "torch") != "torch" else ""
    return (f"{head} torch {r['torch_ms']:9.3f} ms  fastdl {r['fastdl_ms']:9.3f} ms  {r['speedup']:6.2f}x  "
            f"{rate(r, 'fastdl', device):>14} ({100 * r['fraction_of_ceiling']:3.0f}% of {r['ceiling']})  "
            f"peak {mib(r['fastdl_peak_bytes'])}/{mib(r['torch_peak_bytes'])} MiB")


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


def overall_lines(by_family: dict[str, list[dict]]) -> list[str]:
    """One table across families: each family's cases together, then all of them."""
    rows = list(by_family.items())
    if len(rows) > 1:
        rows.append(("all families", [r for results in by_family.values() for r in results]))
    lines = [f"{'family':<13} {'cases':>5} {'geomean':>8} {'slower':>6} {'errors':>6}  best / worst",
             "-" * 100]
    for family, results in rows:
        s = summary(results)
        if "all" not in s:
            lines.append(f"{family:<13} {0:>5} {'-':>8} {'-':>6} {len(s['errors']):>6}")
            continue
        m = s["all"]
        lines.append(f"{family:<13} {m['cases']:>5} {m['geomean_speedup']:>7.2f}x {m['slower_than_torch']:>6} "
                     f"{len(s['errors']):>6}  {m['best']['speedup']:.2f}x {m['best']['case']} / "
                     f"{m['worst']['speedup']:.2f}x {m['worst']['case']}")
    return lines


# A CPU case counts as disturbed where the machine lost this share of its CPU time to steal during a
# side's samples, or where that side's threads were preempted this many times as often as the run's
# typical case (about 30 times a second on the 2-core development machine, from the host's own tasks).
# Steal of 1-2% came and went through a quiet full run (winograd at 8259d08) without moving its rows.
# Or where either canary timed before and after the case (a small matrix product; a copy inside the
# last-level cache) ran below this share of its typical speed in the run: in a conv run at batch 32
# (d3757f1) both sides of ResNet-50's layer3 rows took 1.3-2.3x their times of the run before, with no
# steal, preemption or fault to show for it; and a slowed shared L3 (a neighbour streaming through it,
# likely) slows the cache copy alone (fastdl/bench/host.py cache_copy_gbps).
STEAL_DISTURBED = 0.03
PREEMPTIONS_DISTURBED = 4.0
CANARY_SLOW = 0.85
NAMED_CASES = 12  # disturbed cases named in the summary line; the rest are counted


def host_lines(results: list[dict]) -> list[str]:
    """What the host did during the CPU samples (fastdl/bench/host.py): cases disturbed by steal, by
    preemption or by a slow canary, and the cases whose fastdl calls take page faults. Empty for runs
    without the counts."""
    timed = [r for r in results if not r.get("error") and "host" in r.get("fastdl_timing", {})]
    if not timed:
        return []
    host = lambda r, side: r[f"{side}_timing"]["host"]  # noqa: E731
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    typical = median([host(r, side)["preemptions_per_s"] for r in timed for side in ("fastdl", "torch")])
    canaries = {key: unit for key, unit in (("canary_gflops", "GFLOP/s"), ("cache_copy_gbps", "GB/s cache copy"))
                if any(key in r for r in timed)}
    slowest = lambda r, key: min(r.get(key) or [float("inf")])  # noqa: E731
    typical_speed = {key: median([slowest(r, key) for r in timed if key in r]) for key in canaries}
    slowed = lambda r: any(slowest(r, k) < CANARY_SLOW * typical_speed[k] for k in canaries)  # noqa: E731
    disturbed = [r for r in timed if slowed(r) or any(
        (host(r, side)["steal_fraction"] or 0) > STEAL_DISTURBED
        or host(r, side)["preemptions_per_s"] > PREEMPTIONS_DISTURBED * max(typical, 1.0)
        for side in ("fastdl", "torch"))]
    faulting = [r for r in timed if host(r, "fastdl")["minor_faults_per_call"] >= 1]
    lines = [f"host: preempted {typical:.0f} times a second in the typical case"
             + (", canary " + ", ".join(f"{typical_speed[k]:.0f} {unit}" for k, unit in canaries.items()) if canaries else "")
             + "; "
             f"{len(disturbed)} of {len(timed)} cases disturbed (steal above {STEAL_DISTURBED:.0%} of the CPUs, or "
             f"preemptions above {PREEMPTIONS_DISTURBED:g}x typical, on either side"
             + (f"; or a canary below {CANARY_SLOW:.0%} of typical" if canaries else "") + ")"
             + (": " + ", ".join(r["id"] for r in disturbed[:NAMED_CASES]) if disturbed else "")
             + (f" and {len(disturbed) - NAMED_CASES} more" if len(disturbed) > NAMED_CASES else "")]
    if faulting:
        worst = max(faulting, key=lambda r: host(r, "fastdl")["minor_faults_per_call"])
        lines.append(f"host: fastdl's calls take page faults in {len(faulting)} cases (most: "
                     f"{host(worst, 'fastdl')['minor_faults_per_call']:.0f} a call, {worst['id']})")
    return lines


def markdown(family: str, env: dict, results: list[dict], notes: list[str]) -> str:
    device = env["device"]
    scale, unit = flop_unit(device)
    matmul = ", ".join(f"{dt} {v / scale:.1f} {unit}" for dt, v in env["matmul_gflops"].items())
    lines = [
        f"# fastdl vs PyTorch: {family}",
        "",
        f"- device: {env['device_name']} ({device}), {env['threads']} CPU threads for both sides"
        if device == "cpu" else f"- device: {env['device_name']} ({device}, {env['sm_count']} SMs)",
        f"- torch {env['torch']}, fastdl commit {env['commit']}, {env['date']}",
        f"- ceilings measured at the start: copy {env['copy_gbps']:.1f} GB/s; matmul {matmul}"
        + (" (TF32 off, so a TF32 baseline can pass 100%)" if device == "cuda" else ""),
        "- speedup = torch time / fastdl time (above 1 means fastdl is faster); medians of interleaved "
        "samples; '% of ceiling': achieved rate over the copy bandwidth (GB/s; a case whose data fits in "
        "cache can pass 100%) or over the matmul of the case's dtype (FLOP/s)",
        "- peak MiB: the most memory a step holds at once beyond its inputs (fastdl/bench/memory.py)",
        *(f"- {note}" for note in notes),
        "",
        "| network | layer | op | input shape | dtype | mode | baseline | torch ms | fastdl ms | speedup "
        "| fastdl rate | torch rate | % of ceiling (fastdl / torch) | peak MiB (fastdl / torch) |",
        "|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        shape = "x".join(str(v) for v in r["input_shape"])
        head = f"| {r['network']} | {r['layer']} | {r['op']} | {shape} | {r['dtype']} | {r['mode']} | "
        if r.get("error"):
            lines.append(f"{head}| ERROR: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"{head}{r['baseline']} | {r['torch_ms']:.3f} | {r['fastdl_ms']:.3f} | {r['speedup']:.2f} | "
            f"{rate(r, 'fastdl', device)} | {rate(r, 'torch', device)} | {100 * r['fraction_of_ceiling']:.0f}% / "
            f"{100 * r['torch_fraction_of_ceiling']:.0f}% of {r['ceiling']} | "
            f"{mib(r['fastdl_peak_bytes'])} / {mib(r['torch_peak_bytes'])} |")
    lines += ["", "## Summary", ""] + [f"- {line}" for line in summary_lines(family, summary(results))
                                         + host_lines(results)]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, name: str, family: str, env: dict, results: list[dict],
                 notes: list[str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps({"environment": env, "summary": summary(results), "results": results},
                                    indent=1))
    md_path.write_text(markdown(family, env, results, notes))
    return [json_path, md_path]
