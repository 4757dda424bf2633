"""The static loop report (``python -m zoo.kernels._aot --loops``; zoo/kernels/_sass.py): the SASS parser and cost
model on a hand-written nested loop whose counts are derived by hand, the JIT's launch-time specialisations, the
benchmark shapes in every op's ``aot_specs()``, and the report of three real specs compiled for sm_90 (a direct
convolution, attention on the tensor cores, an elementwise kernel without a loop).

Compilation needs the real Triton JIT (the other tests run the interpreter), so the real specs are compiled in
a subprocess, as in test_compile_targets.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import load_script
from zoo.kernels._aot import _launch_hint, jit_hint, warps_per_sm
from zoo.kernels._sass import count_instructions, find_loops, parse_sass, static_cost

ROOT = Path(__file__).resolve().parents[2]

# A hand-written kernel in cuobjdump's format: an outer loop (0x30-0xd0) around an inner loop (0x50-0xa0), a
# forward branch inside the inner loop (not a loop), the end-of-code trap and its padding.
SNIPPET = """
\tcode for sm_90
\t\tFunction : toy_kernel
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                      /* 0x00000a00ff017b82 */
                                                                               /* 0x000e220000000800 */
        /*0010*/                   S2R R0, SR_TID.X ;                          /* 0x0000000000007919 */
                                                                               /* 0x000e620000002100 */
        /*0020*/                   IMAD.MOV.U32 R2, RZ, RZ, RZ ;               /* 0x000000ffff027224 */
                                                                               /* 0x000fe200078e00ff */
        /*0030*/                   IMAD R3, R0, 0x4, RZ ;                      /* 0x0000000400037824 */
                                                                               /* 0x000fe200078e02ff */
        /*0040*/                   LDG.E.128 R4, desc[UR4][R8.64] ;            /* 0x0000000408047981 */
                                                                               /* 0x000ea2000c1e1d00 */
        /*0050*/                   LDS.64 R10, [R3] ;                          /* 0x00000000030a7984 */
                                                                               /* 0x000e240000000a00 */
        /*0060*/                   FFMA R2, R10, R11, R2 ;                     /* 0x0000000b0a027223 */
                                                                               /* 0x001fe20000000002 */
        /*0070*/              @!P2 BRA 0x90 ;                                  /* 0x000000000004a947 */
                                                                               /* 0x000fea0003800000 */
        /*0080*/                   HFMA2 R12, R10, R11, R12 ;                  /* 0x0000000b0a0c7231 */
                                                                               /* 0x000fe2000000000c */
        /*0090*/                   ISETP.NE.AND P0, PT, R3, 0x10, PT ;         /* 0x000000100300780c */
                                                                               /* 0x000fe20003f05270 */
        /*00a0*/               @P0 BRA 0x50 ;                                  /* 0xfffffffc00e80947 */
                                                                               /* 0x000fea000383ffff */
        /*00b0*/                   HGMMA.64x32x16.F32.BF16 R24, gdesc[UR8], R24 ;  /* 0x0000000008187df0 */
                                                                               /* 0x000fe20008000818 */
        /*00c0*/                   ISETP.NE.AND P1, PT, R0, 0x4, PT ;          /* 0x000000040000780c */
                                                                               /* 0x000fda0003f25270 */
        /*00d0*/               @P1 BRA 0x30 ;                                  /* 0xffffffff00d41947 */
                                                                               /* 0x000fea000383ffff */
        /*00e0*/                   STG.E.64 desc[UR4][R6.64], R2 ;             /* 0x0000000206007986 */
                                                                               /* 0x000fe2000c101b04 */
        /*00f0*/                   EXIT ;                                      /* 0x000000000000794d */
                                                                               /* 0x000fea0003800000 */
        /*0100*/                   BRA 0x100;                                  /* 0xfffffffc00fc7947 */
                                                                               /* 0x000fc0000383ffff */
        /*0110*/                   NOP;                                        /* 0x0000000000007918 */
                                                                               /* 0x000fc00000000000 */
\t\t..........
"""


def test_parse_sass_reads_every_instruction_up_to_the_trap():
    functions = parse_sass(SNIPPET)
    assert list(functions) == ["toy_kernel"]
    instructions = functions["toy_kernel"]
    assert [i.address for i in instructions] == list(range(0, 0x100, 0x10))  # 16; the trap and NOP are not code
    branch = instructions[10]
    assert (branch.predicate, branch.opcode, branch.branch_target()) == ("@P0", "BRA", 0x50)
    assert branch.is_backward_branch() and not instructions[7].is_backward_branch()  # @!P2 BRA 0x90: forward
    assert instructions[4].memory_key() == "LDG.128" and instructions[5].memory_key() == "LDS.64"
    assert instructions[14].memory_key() == "STG.64"
    assert instructions[11].mma_macs() == 64 * 32 * 16 / 128  # a warpgroup instruction, per thread


def test_loops_nest_by_address_range():
    instructions = parse_sass(SNIPPET)["toy_kernel"]
    (outer,) = find_loops(instructions)
    (inner,) = outer.children
    assert (outer.start, outer.end, outer.depth) == (0x30, 0xD0, 1)
    assert (inner.start, inner.end, inner.depth) == (0x50, 0xA0, 2)
    assert [i.address for i in inner.own(instructions)] == [0x50, 0x60, 0x70, 0x80, 0x90, 0xA0]
    assert [i.address for i in outer.own(instructions)] == [0x30, 0x40, 0xB0, 0xC0, 0xD0]


def test_counts_of_the_inner_loop_by_hand():
    instructions = parse_sass(SNIPPET)["toy_kernel"]
    inner = find_loops(instructions)[0].children[0]
    counts = count_instructions(inner.own(instructions))
    assert counts["instructions"] == 6
    assert (counts["ffma"], counts["hfma2"], counts["fma"]) == (1, 1, 2)
    assert counts["memory"] == {"LDS.64": 1}
    assert counts["categories"]["pred"] == 1 and counts["categories"]["control"] == 2
    assert counts["overhead"] == 1  # the ISETP


def test_cost_per_unit_weighs_each_loop_by_its_trips():
    """By hand: top 5 instructions (0x00-0x20, STG, EXIT), the outer loop's own 5, the inner loop's 6; trips 3
    (outer) and 4 (inner per outer pass): 5 + 5 x 3 + 6 x 12 = 92 instructions per thread and program. 256 units
    per program over 2 warps: 4 units per thread, 23 instructions per unit; 12 FFMA + 12 HFMA2 = 6 FMA per unit;
    3 HGMMA.64x32x16 of 256 MACs per thread = 192 MACs per unit."""
    instructions = parse_sass(SNIPPET)["toy_kernel"]
    report = static_cost(instructions, num_warps=2, units_per_program=256, trips=(3, 4))
    assert report["top_instructions"] == 5
    assert [(loop["depth"], loop["instructions"], loop["runs_per_program"]) for loop in report["loops"]] == [
        (1, 5, 3.0),
        (2, 6, 12.0),
    ]
    assert report["hot"]["where"] == "loop 0x0050-0x00a0" and report["hot"]["runs_per_program"] == 12
    assert report["hot"]["instructions_per_fma"] == 3.0
    assert report["program"]["instructions"] == 92 and report["program"]["mma"] == 3
    assert report["units_per_thread"] == 4
    assert report["per_unit"]["instructions"] == 23
    assert report["per_unit"]["ffma"] == 3 and report["per_unit"]["fma"] == 6
    assert report["per_unit"]["mma_macs"] == 192
    assert report["hot"]["share"] == round(72 / 92, 3)
    assert "(5 + 5 x 3 + 6 x 12) / (256 / (32 x 2))" in report["formula"]


def test_trip_counts_must_cover_every_loop_depth():
    instructions = parse_sass(SNIPPET)["toy_kernel"]
    with pytest.raises(ValueError, match="depth 2"):
        static_cost(instructions, num_warps=2, units_per_program=256, trips=(3,))


def _sass(lines: list[str]) -> str:
    """cuobjdump-style lines at addresses 0x0, 0x10, ... (no encodings)."""
    return "\n".join(f"        /*{16 * n:04x}*/                   {line} ;" for n, line in enumerate(lines))


def test_sibling_loops_take_their_own_trip_counts():
    """Two loops one after the other (0x10-0x30, 0x40-0x50), trips 2 and 5: 2 + 3 x 2 + 2 x 5 = 18."""
    lines = ["S2R R0, SR_TID.X", "FFMA R1, R2, R3, R1", "IADD3 R4, R4, 0x1, RZ", "@P0 BRA 0x10"]
    lines += ["FFMA R5, R2, R3, R5", "@P1 BRA.U !UP0, 0x40", "EXIT"]
    instructions = parse_sass(_sass(lines))[""]
    first, second = find_loops(instructions)
    assert (first.start, first.end, second.start, second.end) == (0x10, 0x30, 0x40, 0x50)
    report = static_cost(instructions, num_warps=1, units_per_program=32, trips=((2, 5),))
    assert [loop["runs_per_program"] for loop in report["loops"]] == [2, 5]
    assert report["program"]["instructions"] == 18 and report["per_unit"]["fma"] == 7
    assert report["hot"]["where"] == "loop 0x0040-0x0050"


def test_the_masked_copy_of_a_loop_is_the_one_with_predicated_loads():
    """A loop compiled twice (unmasked and masked) in either order: {"unmasked": a, "masked": b} gives b runs to
    the copy with a predicated global load, wherever the compiler placed it."""
    unmasked = ["LDG.E R6, desc[UR4][R8.64]", "FFMA R1, R6, R3, R1"]
    masked = ["@!P2 LDG.E R6, desc[UR4][R8.64]", "FFMA R1, R6, R3, R1"]
    for first, second, runs in ((unmasked, masked, [3, 1]), (masked, unmasked, [1, 3])):
        lines = ["S2R R0, SR_TID.X", *first, "@P0 BRA 0x10", *second, "@P1 BRA 0x40", "EXIT"]
        instructions = parse_sass(_sass(lines))[""]
        report = static_cost(instructions, num_warps=1, units_per_program=32, trips=({"unmasked": 3, "masked": 1},))
        assert [loop["runs_per_program"] for loop in report["loops"]] == runs


def test_guarded_loops_count_their_regions_by_entries():
    """One part per program: the first part's loop (0x40-0x60) sits in a region that a forward branch at 0x10
    skips (to 0x70), the second part's (0xa0-0xb0) after a conditional EXIT at 0x80. By hand, entered 1/4 and
    3/4 with 2 and 1 trips: top 0x00, 0x10, 0x70, 0x80 = 4; the guard regions' own code 0x20-0x30 (2) and
    0x90, 0xc0 (2); 4 + 2 x 0.25 + 2 x 0.75 + 3 x 0.5 + 2 x 0.75 = 9 instructions per program."""
    lines = ["S2R R0, SR_TID.X", "@P0 BRA 0x70", "IMAD R2, R0, 0x4, RZ", "LEA R4, P1, R2, R6, 0x1"]
    lines += ["LDG.E R6, desc[UR4][R4.64]", "FFMA R1, R6, R3, R1", "@P1 BRA 0x40", "ISETP.NE.AND P2, PT, R0, 0x4, PT"]
    lines += ["@P2 EXIT", "IMAD R7, R0, 0x8, RZ", "FFMA R8, R7, R3, R8", "@P3 BRA 0xa0", "EXIT"]
    instructions = parse_sass(_sass(lines))[""]
    first, second = find_loops(instructions)
    assert (first.start, first.end, second.start, second.end) == (0x40, 0x60, 0xA0, 0xB0)
    trips = (({"entered": 0.25, "trips": 2}, {"entered": 0.75, "trips": 1}),)
    report = static_cost(instructions, num_warps=1, units_per_program=32, trips=trips)
    assert report["top_instructions"] == 4
    assert [(g["instructions"], g["runs_per_program"]) for g in report["guards"]] == [(2, 0.25), (2, 0.75)]
    assert [loop["runs_per_program"] for loop in report["loops"]] == [0.5, 0.75]
    assert report["program"]["instructions"] == 9 and report["program"]["ffma"] == 1.25
    with pytest.raises(ValueError, match="no conditional forward branch"):  # a loop that no guard skips
        static_cost(instructions[2:], num_warps=1, units_per_program=32, trips=({"entered": 1, "trips": 1},))


def test_the_last_loop_of_an_if_elif_chain_is_guarded_by_the_previous_target():
    """``if a: loop 1 else: loop 2``: the branch at 0x10 skips loop 1's region (0x20-0x50) to 0x60, where the
    else region (0x60-0x90) starts; loop 2 has no guard of its own. By hand, entered 1/4 (4 trips) and 3/4 (2
    trips): top 0x00, 0x10 = 2; regions 0x20, 0x50 and 0x60, 0x90; 2 + 2 x 0.25 + 2 x 0.75 + 2 x 1 + 2 x 1.5 = 9."""
    lines = ["S2R R0, SR_TID.X", "@P0 BRA 0x60", "IMAD R2, R0, 0x4, RZ", "FFMA R1, R6, R3, R1", "@P1 BRA 0x30"]
    lines += ["EXIT", "IMAD R7, R0, 0x8, RZ", "FFMA R8, R7, R3, R8", "@P3 BRA 0x70", "EXIT"]
    instructions = parse_sass(_sass(lines))[""]
    trips = (({"entered": 0.25, "trips": 4}, {"entered": 0.75, "trips": 2}),)
    report = static_cost(instructions, num_warps=1, units_per_program=32, trips=trips)
    assert report["top_instructions"] == 2
    assert [(g["instructions"], g["runs_per_program"]) for g in report["guards"]] == [(2, 0.25), (2, 0.75)]
    assert report["program"]["instructions"] == 9 and report["program"]["ffma"] == 2.5


def test_classification_of_compiler_idioms():
    lines = [
        "HFMA2.MMA R5, -RZ, RZ, 0, 0",  # a constant put in a register
        "IMAD.U32 R4, R4, 0x10000, RZ",  # bf16 -> fp32
        "SHF.L.U32 R6, R7, 0x10, RZ",  # bf16 -> fp32
        "IMAD.MOV.U32 R8, RZ, RZ, R9",
        "UIADD3 UR4, UR4, 0x1, URZ",
        "HMMA.16816.F32.BF16 R8, R12, R16, R8",
        "LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R4.64]",
        "LDSM.16.M88.4 R8, [R3]",
    ]
    instructions = parse_sass(_sass(lines))[""]
    assert [i.category() for i in instructions] == ["move", "convert", "convert", "move", "int", "mma", "load", "load"]
    assert instructions[5].mma_macs() == 16 * 8 * 16 / 32
    assert [i.memory_key() for i in instructions[6:]] == ["LDGSTS.128", "LDSM.128"]


@pytest.mark.parametrize(
    "registers, num_warps, shared_bytes, warps, limit",
    [
        (48, 4, 1024, 40, "registers: 48 x 32 = 1536 a warp, 6144 a program, 10 programs in 65536"),
        (255, 4, 0, 8, "registers: 255 rounds up to 256 a thread, 32768 a program, 2 programs"),
        (168, 4, 0, 12, "registers: 5376 a warp, 21504 a program, 3 programs"),
        (64, 4, 100 * 1024, 8, "shared memory: 233472 // (102400 + 1024) = 2 programs"),
        (16, 32, 0, 64, "warps: 2 programs of 32"),
        (16, 1, 0, 32, "programs: at most 32 an SM"),
    ],
)
def test_theoretical_occupancy_on_sm90(registers, num_warps, shared_bytes, warps, limit):
    assert warps_per_sm(registers, num_warps, shared_bytes) == warps, limit


def test_jit_hints_match_triton_specialisation():
    """``launch_spec`` types ints the way the JIT specialises them at launch (Triton's own routine)."""
    native = pytest.importorskip("triton._C.libtriton").native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    for value in (0, 1, 2, 3, 15, 16, 56, 3136, 200704, -16, 2**31, 2**31 + 3):
        kind, hint = native(CUDABackend, value, False, True, True)[:2]
        expected = "i32:1" if kind == "constexpr" else kind + (":16" if hint == "D" else "")
        assert jit_hint(value) == expected, value
    assert jit_hint("*bf16") == "*bf16:16" and jit_hint(0.5) == "fp32"


@pytest.mark.parametrize(("specialize", "align"), [(True, True), (True, False), (False, True), (False, False)])
def test_launch_hints_follow_do_not_specialize_and_do_not_specialize_on_alignment(specialize, align):
    """A kernel parameter in ``do_not_specialize`` / ``do_not_specialize_on_alignment`` gets the spec's type the
    JIT gives it at launch (Triton's own routine, with the flags its binder passes)."""
    native = pytest.importorskip("triton._C.libtriton").native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    param = SimpleNamespace(do_not_specialize=not specialize, do_not_specialize_on_alignment=not align)
    for value in (1, 3, 16, 56, 3136, 2**31 + 16):
        kind, hint = native(CUDABackend, value, False, specialize, align)[:2]
        expected = "i32:1" if kind == "constexpr" else kind + (":16" if hint == "D" else "")
        assert _launch_hint(param, value) == expected, value


def _aot(*args: str, timeout: int = 600) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "zoo.kernels._aot", *args, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_aot_specs_cover_the_benchmarked_cases():
    """Every case of scripts/benchmark.py has specs for the kernels it launches (the issue's list: dwconv at K 3,
    7 (the direct kernel), 13, 31 (the implicit GEMM) in both layouts, the mixer's four stages, 2-D attention with and without the bias, fftconv, s4d and
    group_rational at their sizes)."""
    bench = load_script("benchmark")
    listed = _aot("--list")
    cases: dict[str, set[str]] = {}
    for row in listed:
        if row["case"] is not None:
            cases.setdefault(row["case"], set()).add(row["name"].split("@")[0])
    expected: list[tuple[str, str, str]] = []  # (case, name prefix, name suffix)
    for case, _, k in bench.dwconv_cases(False):  # the kernels ops._path picks: K <= 11 direct, K >= 13 igemm
        conv, wgrad = (
            ("_direct_kernel", "_dwconv_wgrad_kernel") if k <= 11 else ("_igemm_conv_kernel", "_igemm_wgrad_kernel")
        )
        for layout in ("channels_last", "nchw"):
            expected += [(case, f"{conv}[bf16,{layout},", f",{d}]") for d in ("fwd", "bwd")]
            expected.append((case, f"{wgrad}[bf16,{layout},", "]"))
    for case, _ in bench.inception_cases(False):
        expected += [(case, f"_inception_kernel[bf16,channels_last,{d},", "]") for d in ("fwd", "bwd")]
        expected.append((case, "_inception_wgrad_kernel[bf16,channels_last,", "]"))
    attention = ("_na_fwd_kernel", "_na_bwd_kv_kernel", "_na_bwd_q_kernel")
    for case, *_ in bench.neighborhood_cases(False):
        expected += [(case, f"{kernel}[2d,bf16,D32,rpb", "]") for kernel in attention]
        expected += [(case + "-plain", f"{kernel}[2d,bf16,D32,plain", "]") for kernel in attention]
    expected.append(("B1xL32768xH8xD64xK2049", "_na_fwd_kernel[1d,bf16,D64,", "]"))
    for case, *_ in bench.fftconv_cases(False):
        expected += [(case, f"{kernel}[bf16,", "]") for kernel in ("_fftconv_fwd_kernel", "_fftconv_bwd_input_kernel")]
    for case, *_ in bench.ssm_cases(False):
        expected += [
            (case, f"{kernel}[fp32,", "]") for kernel in ("_s4d_vandermonde_fwd_kernel", "_s4d_vandermonde_bwd_kernel")
        ]
    for case, *_ in bench.rational_cases(False):
        expected += [
            (case, f"{kernel}[bf16,", "]") for kernel in ("_group_rational_fwd_kernel", "_group_rational_bwd_kernel")
        ]
    missing = [
        (case, prefix, suffix)
        for case, prefix, suffix in expected
        if not any(n.startswith(prefix) and n.endswith(suffix) for n in cases.get(case, ()))
    ]
    assert not missing, missing


DWCONV = "_dwconv_kernel[bf16,channels_last,P64,C32,w4,fwd]@B64xC384x56x56xK7"
ATTENTION = "_na_fwd_kernel[2d,bf16,D32,rpb]@B64x56x56xH2xD32xK7"
ELEMENTWISE = "_fftconv_fwd_kernel[bf16,D,gelu]@B32xH768xL1024"


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    rows = _aot("--loops", "--filter", DWCONV, "--filter", ATTENTION, "--filter", ELEMENTWISE)
    return {row["name"]: row for row in rows}


def test_report_of_a_direct_convolution(reports):
    """dwconv2d, K 7, 64 positions x 32 channels over 4 warps: the tap loops nest (kh around kw), the kw body
    issues 16 FFMA per thread (2048 / 128) from 128-bit loads; all FFMA of a program are in it (7 x 7 passes);
    the padded taps make more than one FFMA per useful multiply-add."""
    row = reports[DWCONV]
    assert row["spill_bytes"] == 0 and row["registers"] > 0
    assert [(loop["depth"], loop["runs_per_program"]) for loop in row["loops"]] == [(1, 7.0), (2, 49.0)]
    hot = row["hot"]
    assert hot["depth"] == 2 and hot["runs_per_program"] == 49
    assert hot["ffma"] == 64 * 32 // (32 * 4) == 16
    assert "LDG.128" in hot["memory"] and hot["overhead"] > 0
    assert row["program"]["ffma"] == 16 * 49
    assert row["units_per_thread"] == pytest.approx(row["units_per_program"] / (32 * 4), rel=1e-4)
    padded = 16 * 49 / (row["units_per_program"] / 128)
    assert row["per_unit"]["fma"] == pytest.approx(padded, abs=1e-3) and padded > 1
    assert row["per_unit"]["instructions"] > hot["instructions_per_fma"] > 1


def test_report_of_attention_on_the_tensor_cores(reports):
    """2-D neighborhood attention, 8 x 8 query boxes of two heads on one warpgroup (4 warps): one loop over the key
    tiles that cover the windows (26 per 7 programs on a 56-wide axis: 3 at the borders, 4 inside); its body issues
    HGMMA; the tensor-core work per step is at least the two heads' dense 64 x 64 QK^T and PV (2 x 2 x 64 x 64 x 32
    multiply-adds over 128 threads), and per useful pair at least 2 x head_dim."""
    row = reports[ATTENTION]
    assert row["spill_bytes"] == 0
    assert len(row["loops"]) == 1 and row["hot"]["runs_per_program"] == pytest.approx(26 / 7)
    assert any(op.startswith("HGMMA.") for op in row["hot"]["mma"])
    assert row["hot"]["mma_macs"] >= 2 * 2 * 64 * 64 * 32 / 128
    assert row["units_per_thread"] == pytest.approx(2 * 64 * 49 / 128, rel=1e-4)
    assert row["per_unit"]["mma_macs"] >= 2 * 32


def test_report_of_an_elementwise_kernel(reports):
    """fftconv's forward epilogue: no loop, so the hot region is the whole program; 1024 elements over 4 warps."""
    row = reports[ELEMENTWISE]
    assert row["loops"] == [] and row["hot"]["where"] == "top" and row["hot"]["share"] == 1
    assert row["units_per_thread"] == 1024 / 128
    assert row["per_unit"]["instructions"] == pytest.approx(row["top_instructions"] / 8, abs=1e-3)
