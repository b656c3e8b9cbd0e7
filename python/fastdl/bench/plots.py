"""PNG plots of one family's results, with matplotlib (Agg backend; imported only when plots are made,
so the runner works without it):

- <name>-speedup.png: speedup per layer, a panel per mode, a bar per variant (fastdl's algorithm,
  torch's baseline, the dtype: whichever differ), geometric mean over batch sizes and the other
  axes; log scale, with the 1.0 line where fastdl and torch are equally fast.
- <name>-scaling.png: how time grows along each axis with several values (batch size; sequence
  length for RNNs): fastdl's and torch's median times, geometric mean over the cases at each value,
  a panel per axis and mode. Left out when no axis varies.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def _label(r: dict, side: str, several_dtypes: bool) -> str:
    """A series' name: side "fastdl" with its algorithm, "torch" with its baseline, or "" for a speedup
    (both); and the dtype when the run has several."""
    parts = [side] if side else []
    parts.append(r.get("algorithm") if side != "torch" else None)
    parts.append(r["baseline"] if side != "fastdl" and r["baseline"] != "torch" else None)
    parts.append(r["dtype"] if several_dtypes else None)
    return " ".join(p for p in parts if p) or "speedup"


def _speedup_axis(ax, low: float, high: float) -> None:
    """A log2 axis labelled 0.5x, 1x, 2x..., spanning at least 0.5x to 2x so that 1x is in sight."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log", base=2)
    ax.set_ylim(min(0.5, low / 1.3), max(2.0, high * 1.3))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _time_axes(ax, xs: list[int]) -> None:
    """Log axes with plain numbers: the axis's values on x, milliseconds on y."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _layer(r: dict) -> str:
    return f"{r['network']} {r['layer']}"


def _speedup_figure(plt, family: str, timed: list[dict], several_dtypes: bool):
    modes = _ordered(r["mode"] for r in timed)
    layers = _ordered(_layer(r) for r in timed)
    variants = _ordered(_label(r, "", several_dtypes) for r in timed)
    fig, axes = plt.subplots(len(modes), 1, squeeze=False,
                             figsize=(min(40, max(8, 2 + 0.3 * len(layers) * len(variants))), 4 * len(modes)))
    width = 0.8 / len(variants)
    for ax, mode in zip(axes[:, 0], modes):
        groups = defaultdict(list)
        for r in timed:
            if r["mode"] == mode:
                groups[(_layer(r), _label(r, "", several_dtypes))].append(r["speedup"])
        for j, variant in enumerate(variants):
            bars = [(i + (j - (len(variants) - 1) / 2) * width, _geomean(groups[(layer, variant)]))
                    for i, layer in enumerate(layers) if (layer, variant) in groups]
            # Bars start at the 1x line and go up (fastdl faster) or down.
            ax.bar([x for x, _ in bars], [y - 1 for _, y in bars], width, bottom=1, label=variant)
        heights = [_geomean(speedups) for speedups in groups.values()]
        ax.axhline(1.0, color="black", linewidth=0.8)
        _speedup_axis(ax, min(heights), max(heights))
        ax.set_title(f"{family}, {mode}: speedup (geometric mean over batch sizes)", fontsize=9)
        ax.set_ylabel("torch time / fastdl time")
        ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
        if len(variants) > 1:
            ax.legend(fontsize=7)
    return fig


def _scaling_figure(plt, family: str, timed: list[dict], several_dtypes: bool):
    modes = _ordered(r["mode"] for r in timed)
    axis_names = [a for a in _ordered(a for r in timed for a in r.get("axes", {}))
                  if len({r["axes"].get(a) for r in timed}) > 1]
    if not axis_names:
        return None
    fig, axes = plt.subplots(len(axis_names), len(modes), squeeze=False,
                             figsize=(5 * len(modes), 3.8 * len(axis_names)))
    for row, axis in enumerate(axis_names):
        for col, mode in enumerate(modes):
            ax = axes[row, col]
            series = defaultdict(lambda: defaultdict(list))
            for r in timed:
                if r["mode"] == mode and axis in r["axes"]:
                    for side in ("fastdl", "torch"):
                        series[_label(r, side, several_dtypes)][r["axes"][axis]].append(r[f"{side}_ms"])
            for label, points in series.items():
                xs = sorted(points)
                ax.plot(xs, [_geomean(points[x]) for x in xs], marker="o",
                        linestyle="--" if label.startswith("torch") else "-", label=label)
            _time_axes(ax, sorted({x for points in series.values() for x in points}))
            ax.set_xlabel(axis)
            ax.set_ylabel("median ms (geometric mean over cases)")
            ax.set_title(f"{family}, {mode}", fontsize=9)
            ax.legend(fontsize=7)
    return fig


def write_plots(out_dir: Path, name: str, family: str, results: list[dict]) -> list[Path]:
    """The family's PNG files; raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in results if not r.get("error")]
    if not timed:
        return []
    several_dtypes = len({r["dtype"] for r in timed}) > 1
    paths = []
    for suffix, make in (("speedup", _speedup_figure), ("scaling", _scaling_figure)):
        fig = make(plt, family, timed, several_dtypes)
        if fig is None:
            continue
        fig.tight_layout()
        paths.append(out_dir / f"{name}-{suffix}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
