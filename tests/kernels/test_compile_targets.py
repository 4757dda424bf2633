"""Every kernel configuration compiles ahead of time for sm_80 and sm_90, without register spills.

Compilation needs the real Triton JIT (not the interpreter the other tests use on a CPU), so it runs in a
subprocess: ``python -m zoo.kernels._aot --ci --json``. The registers and spills are printed in the test summary.

``--ci`` is the specs marked ``KernelSpec.ci``: the coverage specs (of the depthwise convolution's hundreds of
variants only the first configuration of each list, none of the implicit GEMM's) plus one representative
configuration per kernel of the benchmark-shape specs. The others (the loop report's, ``--loops``) add hundreds of
compilations per target, which CI's two cores cannot afford; ``python -m zoo.kernels._aot`` compiles them all.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reports() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "zoo.kernels._aot", "--ci", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    lines = []
    for r in rows:
        mma = "" if r["matrix_instruction"] is None else f" mma={r['matrix_instruction']}"
        lines.append(
            f"{r['name']:<56} sm_{r['arch']}  registers={r['registers']:<4} spill_bytes={r['spill_bytes']}"
            f" shared_bytes={r['shared_bytes']}{mma}"
        )
    conftest.compile_report_path().write_text("\n".join(lines) + "\n")
    return rows


def test_every_configuration_compiles_for_sm80_and_sm90(reports):
    archs_by_name: dict[str, set[int]] = {}
    for r in reports:
        archs_by_name.setdefault(r["name"], set()).add(r["arch"])
    assert archs_by_name, "no kernel configuration was compiled"
    assert all(archs == {80, 90} for archs in archs_by_name.values()), archs_by_name
    kernels = (
        "_group_rational_fwd_kernel",
        "_group_rational_bwd_kernel",
        "_dwconv_kernel",
        "_dwconv_wgrad_kernel",
        "_inception_kernel",
        "_inception_wgrad_kernel",
    )
    for kernel in kernels:
        for dtype in ("fp32", "bf16", "fp16"):
            assert any(name.startswith(f"{kernel}[{dtype},") for name in archs_by_name), (kernel, dtype)
    fftconv_kernels = (
        "_fftconv_prologue_kernel",
        "_fftconv_fwd_kernel",
        "_fftconv_bwd_epilogue_kernel",
        "_fftconv_bwd_input_kernel",
    )
    for kernel in fftconv_kernels:  # the elementwise kernels around the FFT, every optional part on and off
        for dtype in ("fp32", "bf16", "fp16"):
            for label in (",all", ",plain"):
                assert any(name.startswith(f"{kernel}[{dtype},") and label in name for name in archs_by_name), (
                    kernel,
                    dtype,
                    label,
                )
    for kernel in ("_fftconv_fwd_kernel", "_fftconv_bwd_epilogue_kernel", "_fftconv_bwd_input_kernel"):
        assert any(name.startswith(f"{kernel}[bf16,") and ",direct" in name for name in archs_by_name), kernel
    assert any(name.startswith("_fftconv_bwd_spectral_kernel[fp32,") for name in archs_by_name)
    for kernel in ("_na_fwd_kernel", "_na_bwd_kv_kernel", "_na_bwd_q_kernel"):  # 1-/2-/3-D, every dtype, causal
        for dims in (1, 2, 3):
            for dtype in ("bf16", "fp16", "fp32"):
                assert f"{kernel}[{dims}d,{dtype},D32,rpb]" in archs_by_name, (kernel, dims, dtype)
            assert f"{kernel}[{dims}d,bf16,D32,causal]" in archs_by_name, (kernel, dims)
    for kernel in ("_s4d_vandermonde_fwd_kernel", "_s4d_vandermonde_bwd_kernel", "_s4d_chain_rule_kernel"):
        assert any(name.startswith(f"{kernel}[fp32,") for name in archs_by_name), kernel
    for direction in ("fwd", "bwd"):  # the register-blocked small kernels (K <= 11)
        assert any(name.startswith("_direct_kernel[bf16,") and f",{direction}" in name for name in archs_by_name)
    for kernel in ("_dwconv_kernel", "_inception_kernel"):  # forward and input gradient, both layouts
        for layout in ("channels_last", "nchw"):
            for direction in ("fwd", "bwd"):
                assert any(
                    name.startswith(f"{kernel}[bf16,{layout},") and f",{direction}" in name for name in archs_by_name
                ), (kernel, layout, direction)


def test_benchmark_shapes_are_compiled(reports):
    """A configuration of every kernel at a benchmarked shape, with the JIT's launch-time specialisations there
    (``<spec>@<case>``; all of them in ``--loops``)."""
    names = {r["name"] for r in reports}
    kernels = (
        "_group_rational_fwd_kernel[bf16,",
        "_group_rational_bwd_kernel[bf16,",
        "_dwconv_kernel[bf16,channels_last,",
        "_dwconv_kernel[bf16,nchw,",
        "_dwconv_wgrad_kernel[bf16,channels_last,",
        "_dwconv_wgrad_kernel[bf16,nchw,",
        "_inception_kernel[bf16,channels_last,",
        "_inception_wgrad_kernel[bf16,channels_last,",
        "_igemm_conv_kernel[bf16,channels_last,",
        "_igemm_wgrad_kernel[bf16,channels_last,",
        "_s4d_vandermonde_fwd_kernel[fp32,",
        "_s4d_vandermonde_bwd_kernel[fp32,",
        "_fftconv_fwd_kernel[bf16,",
    )
    for kernel in kernels:
        assert any(name.startswith(kernel) and "]@" in name for name in names), kernel
    assert any(name.startswith("_fftconv_fwd_kernel[bf16,") and ",direct]@" in name for name in names)


def test_attention_kernels_use_the_tensor_cores(reports):
    """bf16/fp16 neighborhood attention: mma.sync on sm_80, wgmma on sm_90 (the 64-query tiles; head_dim > 64
    takes 32-query backward tiles, which use mma.sync)."""
    for r in reports:
        if not r["name"].startswith("_na_") or ",fp32," in r["name"]:
            continue
        if r["arch"] == 90 and "_bwd_" in r["name"] and ",D128," in r["name"]:
            continue  # 32-query tiles: too small for wgmma's 64-row warpgroup tiles
        assert r["matrix_instruction"], (r["name"], r["arch"])


def test_large_depthwise_kernels_use_the_tensor_cores(reports):
    """The implicit-GEMM path of K >= 13 (bf16): mma.sync on sm_80 (its 3-D dot lowers to mma.sync on sm_90 too,
    which the loop report counts as HMMA)."""
    igemm = [r for r in reports if r["name"].startswith("_igemm_") and r["arch"] == 80]
    assert igemm
    for r in igemm:
        assert r["matrix_instruction"], r["name"]


# Triton 3.6 (torch 2.11's, the GPU machine's) keeps an 8-byte stack frame in three attention specs on sm_80, none on
# sm_90 (docs/design.md §18); under every other version, and in every other spec, nothing spills.
TRITON_36_SM80_FRAMES = frozenset(
    {"_na_fwd_kernel[2d,fp32,D32,rpb]", "_na_bwd_kv_kernel[2d,bf16,D48,rpb]", "_na_bwd_q_kernel[1d,fp32,D32,rpb]"}
)


def _known_frame(report: dict, triton_version: str) -> bool:
    return (
        triton_version.startswith("3.6.")
        and report["arch"] == 80
        and report["name"] in TRITON_36_SM80_FRAMES
        and report["spill_bytes"] <= 8
    )


def test_no_register_spills(reports):
    version = importlib.metadata.version("triton")
    spilled = [
        f"{r['name']} sm_{r['arch']}: {r['spill_bytes']} B"
        for r in reports
        if r["spill_bytes"] > 0 and not _known_frame(r, version)
    ]
    assert not spilled, "register spills (local memory) in: " + ", ".join(spilled)
