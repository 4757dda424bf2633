"""scripts/compile_time.py: the Triton compiles of a model's first step, without a GPU (the stand-in sm_90 driver
of scripts/host_time.py). Asserts which kernels compile and what the report says about them, never the times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_a_kernel_compiled_twice_for_a_specialised_argument_is_reported_with_that_argument():
    compile_time = load_script("compile_time")
    Compile, compiled_more_than_once = compile_time.Compile, compile_time.compiled_more_than_once

    tile = {"TILE": 256}
    compiles = [
        Compile("k", 2.0, tile, {"num_warps": 4}, {"x_ptr": "/16", "strips": "=1"}),
        Compile("k", 3.0, tile, {"num_warps": 4}, {"x_ptr": "/16"}),
        Compile("k", 1.0, tile, {"num_warps": 8}, {"x_ptr": "/16"}),  # another configuration: a compile of its own
        Compile("k", 1.0, {"TILE": 512}, {"num_warps": 4}, {}),  # other constexprs: another variant
        Compile("other", 1.0, tile, {"num_warps": 4}, {}),
    ]
    (found,) = compiled_more_than_once(compiles)
    assert found["kernel"] == "k" and found["compiles"] == 2 and found["seconds"] == 5.0
    assert found["constexprs"] == tile and found["options"] == {"num_warps": 4}
    assert found["differing"] == {"strips": ["=1", "-"]}


def _kat_t_at_64_px(out: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    """compile_time.py on kat_t's first training step at batch 1, 64 px, with ``options``: the process, and the
    results file it wrote to ``out`` (parsed, and its name)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "scripts/compile_time.py", "kat_t", "--batch", "1", "--img-size", "64", *options]
    proc = subprocess.run(cmd + ["--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (written,) = out.glob("*-compile-time-64px-*.json")
    return proc, json.loads(written.read_text()), written.name


def test_the_first_training_step_of_kat_t_compiles_its_rational_kernels_for_sm_80_at_64_px(tmp_path):
    proc, results, name = _kat_t_at_64_px(tmp_path, "--arch", "80")
    assert name.endswith("-compile-time-64px-sm80.json")
    assert results["triton"] and results["settings"] == {
        "batch": 1,
        "img_size": 64,
        "target": "sm_80 (stand-in driver)",
        "precompile_threads": 0,
    }
    (model,) = results["models"]
    assert model["precompile"] is None
    assert model["model"] == "kat_t" and model["step"] == "training"
    assert model["img_size"] == 64 and model["arch"] == 80
    kernels = {c["kernel"] for c in model["compiles"]}
    # KAT's blocks: LayerNorm + act1 fused, act2 alone; forward and backward each (the autotuners' configurations)
    assert {"_norm_rational_fwd_kernel", "_norm_rational_bwd_kernel"} <= kernels
    assert {"_group_rational_fwd_kernel", "_group_rational_bwd_kernel"} <= kernels
    forward = next(c for c in model["compiles"] if c["kernel"] == "_group_rational_fwd_kernel")
    assert {"TILE", "BLOCK_D", "APPROX"} <= set(forward["constexprs"]) and forward["options"]["num_warps"] > 0
    assert all(c["seconds"] > 0 and c["registers"] > 0 for c in model["compiles"])
    # its ahead-of-time specs compile without spills on sm_80 (tests/kernels/test_compile_targets.py); so does the step
    assert all(c["spill_bytes"] == 0 for c in model["compiles"]) and "Spills: none" in proc.stdout
    # every compile was reported as it finished (progress on stderr), and the table lists each
    assert proc.stderr.count("_rational_") == sum("_rational_" in c["kernel"] for c in model["compiles"])
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "_kernel" in line]
    assert len(table) == len(model["compiles"])


def test_with_a_precompile_pass_the_step_itself_compiles_nothing(tmp_path):
    proc, results, name = _kat_t_at_64_px(tmp_path, "--precompile", "2")
    assert name.endswith("-compile-time-64px-sm90-precompile2.json")
    assert results["settings"]["precompile_threads"] == 2
    (model,) = results["models"]
    passed = model["precompile"]
    assert passed["workers"] == 2 and passed["queued"] == len(model["compiles"]) > 0 and passed["step_compiles"] == 0
    assert 0 < passed["seconds"] <= model["seconds"]
    assert f"precompile: {passed['queued']} compiles queued" in proc.stdout
