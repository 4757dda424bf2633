"""scripts/benchmark.py runs on a CPU with small sizes (a smoke test: rows and files, never timings)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_smoke_writes_results_and_table(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = benchmark  # dataclasses look their module up there
    spec.loader.exec_module(benchmark)
    out = tmp_path / "results"
    results = benchmark.main(["--small", "--out", str(out)])
    files = list(out.glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["device"] == results.device and data["torch"] and data["triton"]
    combos = {(r["impl"], r["pass_"]) for r in data["ops"]}
    impls = {"reference", "reference+compile", "triton"}
    assert combos == {(i, p) for i in impls for p in ("fwd", "fwd+bwd")}
    assert all(r["ms"] > 0 and r["bytes_moved"] > 0 for r in data["ops"])
    table = (out / "README.md").read_text()
    assert "| group_rational | B2xL17x48 | bfloat16 | fwd+bwd | triton |" in table
    # model rows: the zoo model with the reference backend (Triton would be the interpreter on a CPU) and its peer
    models = {(r["model"], r["backend"], r["mode"]) for r in data["models"]}
    assert models == {(m, b, mode) for m, b in (("kat_t", "torch"), ("vit_tiny_patch16_224", "timm"))
                      for mode in ("train", "infer")}
    assert all(r["images_per_s"] > 0 for r in data["models"])
    assert "| kat_t | torch | train | 2 | 32 |" in table
