"""The benchmark runner end to end: `python -m fastdl.bench --smoke` on the CPU (the cheapest cases of
every family, minimal timing) writes complete, well-formed JSON, Markdown and PNG files, and
`compare` flags an injected regression but not an identical run. No timing is asserted."""

import copy
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastdl
from fastdl.bench import compare
from fastdl.bench.__main__ import parse_args, select
from fastdl.bench.cases import FAMILIES
from fastdl.bench.plots import write_plots
from fastdl.bench.progress import Progress
from fastdl.bench.report import host_lines

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The runner's output folder and its completed process (one thread: steady on a busy machine)."""
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(fastdl.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "fastdl.bench", "--smoke", "--device", "cpu", "--threads", "1",
                          "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    return out, run


def expected_ids(family: str) -> list[str]:
    return [c.id for c in select(family, "cpu", [torch.float32], parse_args(["--smoke"]))]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_runner_succeeds_with_plain_lines(smoke):
    _, run = smoke
    assert run.returncode == 0, run.stdout + run.stderr
    assert "\r" not in run.stdout  # no progress bar outside a terminal
    assert "all families" in run.stdout
    for family in FAMILIES:
        assert f"{family} all: geomean speedup" in run.stdout


@pytest.mark.parametrize("family", list(FAMILIES))
def test_json_has_every_case_measured(smoke, family):
    out, _ = smoke
    data = json.loads((out / f"{family}-smoke.json").read_text())
    env = data["environment"]
    assert env["device"] == "cpu" and env["threads"] == 1 and env["torch"] == torch.__version__
    assert env["commit"] and env["date"]
    assert positive(env["copy_gbps"]) and positive(env["matmul_gflops"]["float32"])
    assert [r["id"] for r in data["results"]] == expected_ids(family)
    for r in data["results"]:
        assert r["error"] is None
        rates = [r[k] for k in ("fastdl_gflops", "torch_gflops", "fastdl_gbps", "torch_gbps") if k in r]
        assert len(rates) == 2
        for value in [r["fastdl_ms"], r["torch_ms"], r["speedup"], r["fraction_of_ceiling"],
                      r["torch_fraction_of_ceiling"], r["fastdl_peak_bytes"], r["torch_peak_bytes"], *rates]:
            assert positive(value), r
        for side in ("fastdl", "torch"):
            t = r[f"{side}_timing"]
            assert 0 < t["p10_ms"] <= t["median_ms"] <= t["p90_ms"] and t["samples"] >= 3
            host = t["host"]  # what else the host did during the samples
            assert host["minor_faults_per_call"] >= 0 and host["preemptions_per_s"] >= 0
            assert host["steal_fraction"] is None or 0 <= host["steal_fraction"] <= 1
        assert len(r["canary_gflops"]) == 2 and all(positive(v) for v in r["canary_gflops"])
        assert len(r["cache_copy_gbps"]) == 2 and all(positive(v) for v in r["cache_copy_gbps"])
    assert data["summary"]["all"]["cases"] == len(data["results"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_markdown_and_plots(smoke, family):
    out, _ = smoke
    markdown = (out / f"{family}-smoke.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(expected_ids(family))  # header and one row per case
    assert "ERROR" not in markdown and "## Summary" in markdown
    for suffix in ("speedup", "scaling"):  # smoke runs two batch sizes: a scaling plot too
        assert (out / f"{family}-smoke-{suffix}.png").read_bytes().startswith(PNG_SIGNATURE)


def test_channels_last_run_measures_channels_last_tensors(tmp_path):
    """--channels-last: the convolution cases' images, weights and gradients are channels-last (so both
    sides' outputs are), their ids and the files say so, and other families are refused by name."""
    args = parse_args(["--smoke", "--ops", "conv,winograd", "--channels-last"])
    for family in ("conv", "winograd"):
        cases = select(family, "cpu", [torch.float32], args)
        assert cases and all(c.id.endswith("/channels_last") for c in cases)
        for case in cases:
            inputs = case.make_inputs()
            assert inputs["x"].is_contiguous(memory_format=torch.channels_last)
            assert inputs["weight"].is_contiguous(memory_format=torch.channels_last)
            assert "grad" not in inputs or inputs["grad"].is_contiguous(memory_format=torch.channels_last)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(fastdl.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "fastdl.bench", "--smoke", "--device", "cpu", "--threads", "1", "--out",
               str(tmp_path), "--channels-last"]
    run = subprocess.run(command + ["--ops", "conv"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads((tmp_path / "conv-smoke-channels-last.json").read_text())
    assert [r["id"] for r in data["results"]] == [c.id for c in select("conv", "cpu", [torch.float32], args)]
    assert all(r["error"] is None for r in data["results"])
    refused = subprocess.run(command + ["--ops", "conv,pool"], capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode != 0 and "--channels-last" in refused.stderr and "'pool'" in refused.stderr


def host_row(name: str, fastdl: dict, torch_side: dict) -> dict:
    quiet = {"minor_faults_per_call": 0.0, "preemptions_per_s": 30.0, "steal_fraction": 0.0}
    return {"id": name, "error": None, "fastdl_timing": {"host": {**quiet, **fastdl}},
            "torch_timing": {"host": {**quiet, **torch_side}}}


def test_host_lines_name_the_disturbed_and_faulting_cases():
    rows = [host_row(f"quiet{i}", {}, {}) for i in range(5)]
    rows += [host_row("stolen", {}, {"steal_fraction": 0.05}), host_row("preempted", {"preemptions_per_s": 400}, {}),
             host_row("faulting", {"minor_faults_per_call": 12.0}, {})]
    lines = host_lines(rows)
    assert "preempted 30 times a second" in lines[0] and "2 of 8 cases disturbed" in lines[0]
    assert lines[0].endswith(": stolen, preempted")
    assert "page faults in 1 cases (most: 12 a call, faulting)" in lines[1]
    assert host_lines([host_row("quiet", {}, {})])[0].endswith("on either side)")
    assert host_lines([{"id": "gpu", "error": None, "fastdl_timing": {}}]) == []
    many = host_lines([host_row(f"stolen{i}", {"steal_fraction": 0.5}, {}) for i in range(20)])[0]
    assert "stolen11 and 8 more" in many and "stolen12" not in many
    canaries = [{**host_row(f"c{i}", {}, {}), "canary_gflops": [170.0, 168.0]} for i in range(4)]
    canaries.append({**host_row("slowed", {}, {}), "canary_gflops": [170.0, 90.0]})
    line = host_lines(canaries)[0]
    assert "canary 168 GFLOP/s" in line and "1 of 5 cases disturbed" in line and line.endswith(": slowed")
    assert "cache copy" not in line  # runs recorded before the cache canary
    both = [{**r, "cache_copy_gbps": [70.0, 68.0]} for r in canaries]
    both.append({**host_row("cache", {}, {}), "canary_gflops": [170.0, 168.0], "cache_copy_gbps": [70.0, 41.0]})
    line = host_lines(both)[0]
    assert "canary 168 GFLOP/s, 68 GB/s cache copy;" in line and "2 of 6 cases disturbed" in line
    assert line.endswith(": slowed, cache")


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream", [io.StringIO(), Terminal()], ids=["log", "terminal"])
def test_progress(stream):
    progress = Progress(2, stream)
    progress.start("case a")
    progress.finish("line a")
    progress.print("a note")
    progress.close()
    text = stream.getvalue()
    if stream.isatty():
        assert "1/2" in text and "case a" in text and text.endswith("\r\033[K")
    else:
        assert text == "line a\na note\n"


def test_plots_need_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError):
        write_plots(tmp_path, "x", "x", [])


def with_spread(run: dict, spread: float) -> dict:
    """A copy of the run whose every timing has p10 and p90 at (1 -+ spread) x its median."""
    run = copy.deepcopy(run)
    for r in run["results"]:
        for side in ("fastdl", "torch"):
            t = r[f"{side}_timing"]
            t["p10_ms"], t["p90_ms"] = t["median_ms"] * (1 - spread), t["median_ms"] * (1 + spread)
    return run


def slower(run: dict, factor: float) -> dict:
    run = copy.deepcopy(run)
    for r in run["results"]:
        r["speedup"] /= factor
    return run


def test_compare_flags_regressions_beyond_noise(smoke):
    out, _ = smoke
    recorded = json.loads((out / "conv-smoke.json").read_text())
    assert not any(c["verdict"] == "regression" for c in compare.compare(recorded, recorded).values())

    quiet, noisy = with_spread(recorded, 0.0), with_spread(recorded, 0.1)  # noise 0% and 20% per run
    verdicts = lambda old, new: {c["verdict"] for c in compare.compare(old, new).values()}  # noqa: E731
    assert verdicts(quiet, slower(quiet, 1.2)) == {"regression"}
    assert verdicts(quiet, slower(quiet, 1.02)) == {"same"}  # below MIN_CHANGE
    assert verdicts(noisy, slower(noisy, 1.3)) == {"same"}  # within both runs' 40%
    assert verdicts(noisy, slower(noisy, 2.0)) == {"regression"}
    assert verdicts(quiet, slower(quiet, 1 / 1.2)) == {"improvement"}
    failing = copy.deepcopy(quiet)
    failing["results"][0]["error"] = "output 0 differs from torch's"
    assert compare.compare(quiet, failing)[failing["results"][0]["id"]]["verdict"] == "regression"


def test_compare_exit_status(smoke, tmp_path):
    out, _ = smoke
    old = with_spread(json.loads((out / "conv-smoke.json").read_text()), 0.0)
    paths = {"old": tmp_path / "old.json", "new": tmp_path / "new.json"}
    paths["old"].write_text(json.dumps(old))
    paths["new"].write_text(json.dumps(slower(old, 2.0)))
    assert compare.main([str(paths["old"]), str(paths["old"])]) == 0
    assert compare.main([str(paths["old"]), str(paths["new"])]) == 1


def run_bench_script(name, *args):
    """A script of bench/ (run by `make gpu-check`) on the CPU, one thread: the cells of its table rows."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root / "python"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(root / "bench" / name), "--device", "cpu", "--budget", "0", *args],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_winograd_weight_grad_script_prints_a_row_per_layer_and_batch():
    """bench/winograd_weight_grad.py: one layer, two batches."""
    rows = run_bench_script("winograd_weight_grad.py", "--batches", "1,2", "--layers", "ResNet-50/layer1.0.conv2")
    rows = [row for row in rows if row[0].startswith("ResNet-50 layer1.0.conv2")]
    assert len(rows) == 2
    for row in rows:
        errors = [float(cell) for cell in row[-4:]]
        assert all(0 <= e < 1e-5 for e in errors), row  # every path agrees with float64


def test_ab_rules_script_prints_both_sides_of_every_rule():
    """bench/ab_rules.py, where neither rule exists."""
    rows = run_bench_script("ab_rules.py", "--conv-batches", "1", "--rnn-batches", "1", "--winograd-batches", "1",
                            "--fused-batches", "1")
    rules = [row for row in rows if row[0].startswith(("conv ", "rnn ", "winograd fused "))]
    assert len(rules) == 3 * 2 + 2 * 2 + 7 * 3
    for row in rules:
        assert all(float(cell) > 0 for cell in row[1:4]), row
    maps = [row for row in rows if row[0].startswith("ResNet-50/")]
    assert [row[0].split()[0] for row in maps] == ["ResNet-50/layer4.1.conv2"] * 2 + ["ResNet-50/layer3.1.conv2"] * 2
    for row in maps:
        assert all(float(cell) > 0 for cell in row[1:5]) and row[5] in ("direct", "winograd2", "winograd4"), row


@pytest.mark.cuda
def test_rnn_memory_trace_accounts_for_the_peak():
    """bench/rnn_memory_trace.py: the blocks it lists at the peak add up to the peak it reports."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root / "python"))
    done = subprocess.run([sys.executable, str(root / "bench" / "rnn_memory_trace.py"), "--batch", "16", "--seq", "20",
                           "--hidden", "256"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    peak = float(done.stdout.split("held at the trace's peak (allocations made inside the step): ")[1].split()[0])
    rows = [line.strip("|").split("|") for line in done.stdout.splitlines()
            if line.startswith("| ") and line[2:3].isdigit()]
    assert peak > 0 and abs(sum(float(row[0]) for row in rows) - peak) <= 0.01 * len(rows) + 0.05


def test_rnn_memory_trace_finds_the_blocks_alive_at_the_peak_and_who_allocated_them():
    """bench/rnn_memory_trace.py's replay of an allocator trace and its allocation sites, on a made-up trace."""
    path = Path(__file__).resolve().parents[1] / "bench" / "rnn_memory_trace.py"
    spec = importlib.util.spec_from_file_location("rnn_memory_trace", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    trace = [{"action": "alloc", "addr": 1, "size": 10}, {"action": "alloc", "addr": 2, "size": 5},
             {"action": "free_requested", "addr": 1, "size": 10}, {"action": "free_completed", "addr": 1, "size": 10},
             {"action": "alloc", "addr": 3, "size": 3}, {"action": "alloc", "addr": 4, "size": 8}]
    peak, blocks = script.live_at_peak(trace)
    assert peak == 16 and sorted(blocks) == [2, 3, 4]
    frames = [{"name": "c10::cuda::malloc(unsigned long)", "filename": "??", "line": 0},
              {"name": "at::mm(at::Tensor const&, at::Tensor const&)", "filename": "??", "line": 0},
              {"name": "fastdl::RnnLayerOps<B>::lstm_layer_backward(int)", "filename": "??", "line": 0},
              {"name": "backward", "filename": "/x/fastdl/ops/rnn.py", "line": 12}]
    assert script.site(frames) == "at::mm <- fastdl::RnnLayerOps<B>::lstm_layer_backward <- rnn.py:12 backward"
    assert script.site([]) == "(no Python or fastdl frame)"


def test_sass_loop_mix_finds_the_tiles_main_loops():
    """bench/sass_loop_mix.py on the built convolution kernels: every float32 int32-index tile's main loop
    holds one slice's 8 x 4 x 16 FFMAs; the 16-bit unit has FFMA tiles and tensor-core tiles (8 mma.sync
    per slice), nothing else."""
    root = Path(__file__).resolve().parents[1]
    objects = {unit: root / "build" / "temp" / "csrc" / "cuda" / f"{unit}.o"
               for unit in ("conv2d_kernels", "conv2d_kernels_16bit")}
    if not fastdl.cuda_enabled() or not all(o.exists() for o in objects.values()):
        pytest.skip("CUDA kernels not built in this tree")
    for unit, wanted in (("conv2d_kernels", {"512"}), ("conv2d_kernels_16bit", {"512", "8"})):
        done = subprocess.run([sys.executable, str(root / "bench" / "sass_loop_mix.py"), str(objects[unit]),
                               "--match", "TileConfigIfi"], capture_output=True, text=True, timeout=300)
        if done.returncode != 0 and "cuobjdump not found" in done.stderr:
            pytest.skip("no cuobjdump")
        assert done.returncode == 0, done.stderr
        math = [line.split("math ")[1].split()[0] for line in done.stdout.splitlines() if line.startswith("    loop ")]
        assert set(math) == wanted, done.stdout
