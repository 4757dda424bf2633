"""scripts/benchmark.py runs on a CPU with small sizes (a smoke test: rows and files, never timings)."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys

import torch

from tests.helpers import ROOT, cpu_only_env, load_script


def test_benchmark_smoke_writes_results_and_table(tmp_path):
    """``scripts/benchmark.py --small`` as on a machine without a GPU (a subprocess that sees none), one call per
    row: every op and model row, the JSON and the table. The compiled-reference rows trace without Inductor's code
    generation (``COMPILE_BACKEND``; the ops' and models' compile tests run Inductor on them)."""
    out = tmp_path / "results"
    run_smoke = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.helpers import load_script; "
        "benchmark = load_script('benchmark'); benchmark.TIMING = benchmark.Timing(cpu_warmup=False, cpu_samples=1); "
        "benchmark.COMPILE_BACKEND = 'aot_eager'; "
        f"benchmark.main(['--small', '--out', {str(out)!r}])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", run_smoke], capture_output=True, text=True, timeout=900, env=cpu_only_env(), cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = list(out.glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["device"].startswith("CPU") and data["torch"] and data["triton"]
    combos = {(r["op"], r["impl"], r["pass_"]) for r in data["ops"]}
    impls = {
        "group_rational": {"reference", "reference+compile", "triton"},
        "layer_norm_group_rational": {"reference", "reference+compile", "triton", "triton-unfused"},
        "gelu_grn": {"reference", "reference+compile", "triton", "modules"},
        "batch_norm_add": {"reference", "reference+compile", "triton", "modules"},
        "batch_norm_se": {"reference", "reference+compile", "triton", "modules"},
        "mlp": {"triton", "vit"},
        "host_probe": {"triton", "torch"},  # and triton-launch and fast-launch, forward only (below)
        "dwconv2d": {"reference", "triton"},
        "inception_dwconv2d": {"reference", "reference+compile", "triton"},
        "s4d_kernel": {"reference", "reference+compile", "triton"},
        "fftconv": {"reference", "reference+compile", "triton"},
        "s4d_layer": {"reference", "reference+compile"},
        "longconv_layer": {"reference", "reference+compile"},
        "neighborhood_attention": {"reference", "triton"},
    }
    expected = {(op, i, p) for op, names in impls.items() for i in names for p in ("fwd", "fwd+bwd")}
    assert combos == expected | {("host_probe", "triton-launch", "fwd"), ("host_probe", "fast-launch", "fwd")}
    assert all(r["ms"] > 0 and r["bytes_moved"] > 0 for r in data["ops"])
    assert all("TFLOP/s" in r["note"] for r in data["ops"] if r["op"] == "neighborhood_attention")
    table = (out / "README.md").read_text()
    assert "| group_rational | B2xL17x48 | bfloat16 | fwd+bwd | triton |" in table
    assert "| inception_dwconv2d | B2xC16x9x9 | bfloat16 | fwd+bwd | triton |" in table
    assert "| s4d_kernel | H5xN8xL37 | float32 | fwd+bwd | triton |" in table
    assert "| fftconv | B2xH3xL37xK5 | bfloat16 | fwd+bwd | triton |" in table
    # model rows: each zoo model with the reference backend (Triton would be the interpreter on a CPU), its peers
    models = {(r["group"], r["model"], r["backend"], r["mode"]) for r in data["models"]}
    expected = [
        ("kat", "kat_t", "torch"),
        ("kat", "vit_tiny_patch16_224", "timm"),
        ("inceptionnext", "inceptionnext_t", "torch"),
        ("inceptionnext", "convnext_tiny", "timm"),
        ("inceptionnext", "inception_next_tiny", "timm"),
        ("unireplknet", "unireplknet_t", "torch"),
        ("unireplknet", "unireplknet_t", "torch-deployed"),
        ("unireplknet", "convnext_tiny", "timm"),
        ("listops", "s4d_s", "torch"),
        ("listops", "longconv_s", "torch"),
        ("nat", "nat_m", "torch"),
        ("nat", "convnext_tiny", "timm"),
    ]
    modes = {backend: ("infer",) if backend.endswith("-deployed") else ("train", "infer") for *_, backend in expected}
    assert models == {(*row, mode) for row in expected for mode in modes[row[2]]}  # deployed forms: inference
    assert all(r["images_per_s"] > 0 for r in data["models"])
    assert "| kat_t | torch | train | 2 | 32 |" in table
    assert "| longconv_s | torch | train | 2 | 40 |" in table  # sequences: batch 2 of 40 tokens
    # each zoo row is compared with every timm peer of its family
    row = next(line for line in table.splitlines() if line.startswith("| inceptionnext_t | torch | infer |"))
    assert "x convnext_tiny, " in row and "x inception_next_tiny |" in row


def test_timing_once_runs_each_function_once_untimed(monkeypatch):
    """``Timing(once=True)``, gpu_check's warm-up: one call, NaN milliseconds (on a GPU also no graph replays or
    host-time samples, which a CPU never takes)."""
    benchmark = load_script("benchmark")
    monkeypatch.setattr(benchmark, "TIMING", benchmark.Timing(once=True))
    calls = []
    device = torch.device("cpu")
    assert math.isnan(benchmark._time_ms(lambda: calls.append(1), device))
    assert calls == [1]


def test_rows_run_both_passes_inside_their_context():
    """``around`` (the mixer's grid sweep) holds for the whole pass: the forward and the backward that
    ``autograd.grad`` runs after the implementation returns; other implementations run outside it."""
    benchmark = load_script("benchmark")
    seen: list[tuple[str, str, bool]] = []
    inside = []

    @contextlib.contextmanager
    def setting():
        inside.append(True)
        try:
            yield
        finally:
            inside.pop()

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, name):
            ctx.name = name
            seen.append((name, "forward", bool(inside)))
            return x * 2

        @staticmethod
        def backward(ctx, dy):
            seen.append((ctx.name, "backward", bool(inside)))
            return dy * 2, None

    x = torch.randn(3, requires_grad=True)
    impls = {name: (lambda t, name=name: Probe.apply(t, name)) for name in ("swept", "plain")}
    rows = benchmark._op_rows(
        "probe", "c", torch.float32, torch.device("cpu"), impls, (x,), (x,), torch.ones(3), {"fwd": 1, "fwd+bwd": 1},
        around={"swept": setting},
    )  # fmt: skip
    assert [(r.impl, r.pass_) for r in rows] == [(i, p) for i in impls for p in ("fwd", "fwd+bwd")]
    assert {(name, step) for name, step, _ in seen} == {(n, s) for n in impls for s in ("forward", "backward")}
    assert all(flag == (name == "swept") for name, _, flag in seen)
