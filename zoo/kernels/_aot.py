"""Ahead-of-time compilation of every kernel for GPU targets, on a machine without a GPU.

Each kernel module lists its configurations in ``aot_specs()``; this module compiles each one to a cubin for
sm_80 (A100) and sm_90 (H100) with ``triton.compile(ASTSource(...), target=GPUTarget(...))`` and reads the
resource usage (registers, spills) with the ``cuobjdump`` shipped inside Triton. With ``--loops`` it also reads
the sm_90 SASS of the specs that carry a benchmark shape (``KernelSpec.work``) and reports their loops and the
instructions per unit of useful work (``zoo/kernels/_sass.py``).

Run it as a program (the Triton interpreter must be OFF, so do not set ``TRITON_INTERPRET``)::

    python -m zoo.kernels._aot                    # registers and spills, a table
    python -m zoo.kernels._aot --json             # one JSON object per line (used by the tests)
    python -m zoo.kernels._aot --ci --json        # the subset the tests compile (every spec with ci=True)
    python -m zoo.kernels._aot --list             # the specs' names, nothing compiled
    python -m zoo.kernels._aot --loops            # the static loop report (sm_90), a table
    python -m zoo.kernels._aot --loops --write benchmarks/static   # ... written as JSON and markdown
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TARGETS = (80, 90)
LOOP_ARCH = 90  # the loop report reads Hopper's SASS
MATRIX_INSTRUCTIONS = {80: "mma.sync", 90: "wgmma"}
REPORT_NAME = "sm90-loops"  # benchmarks/static/sm90-loops.json and README.md


@dataclass(frozen=True)
class Work:
    """The useful work of one program of a spec at a benchmark shape, for the loop report.

    ``case``: the benchmark case (``scripts/benchmark.py``'s name); ``unit``: what one unit of useful work is
    ("MAC" of a tap that lands on the map, "pair" of a query and a key in its window, "element", ...);
    ``per_program``: useful units per program, the launch's total over its number of programs (masked lanes,
    padded taps and wasted logits are not units); ``trips``: the average trip count of the loops by nesting depth,
    outermost first (a loop at depth d runs trips[0] x ... x trips[d - 1] times per program; an entry may be a
    tuple, one per loop of that depth in address order, or ``{"unmasked": a, "masked": b}`` for a loop compiled
    twice, told apart by the masked copy's predicated loads); ``formula``: how both were computed, in words."""

    case: str
    unit: str
    per_program: float
    trips: tuple = ()
    formula: str = ""


@dataclass(frozen=True)
class KernelSpec:
    """One kernel configuration to compile: the @triton.jit function, its argument types and constexprs."""

    name: str
    fn: Any  # triton.runtime.jit.JITFunction
    # runtime arguments, as triton's AOT compiler writes them: "*bf16", "i32", with the launch-time
    # specialisations the JIT would make: ":16" (pointer 16-byte aligned / int divisible by 16), ":1" (int == 1)
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3
    uses_dot: bool = False  # matrix-shaped kernels: the PTX must use the tensor cores
    work: Work | None = None  # a benchmark shape: the spec is in the loop report
    ci: bool = True  # compiled by tests/kernels/test_compile_targets.py (``--ci``); else by the CLI only
    maxnreg: int | None = None  # the configuration's register bound (``triton.Config(maxnreg=...)``), if any


def jit_hint(value: Any) -> str:
    """The type and launch-time specialisation the JIT gives an argument value (Triton 3.x): an int equal to 1
    is a constant (``"i32:1"``), an int divisible by 16 (0 included) gets ``":16"``, ints beyond 32 bits are
    i64; floats are fp32 (not specialised). A string is taken as a type already (``"*bf16"``: a pointer, which
    gets ``":16"``, the alignment of every allocation torch makes, unless it names its own hint)."""
    if isinstance(value, str):
        return value if ":" in value or not value.startswith("*") else f"{value}:16"
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        if value == 1:
            return "i32:1"
        kind = "i32" if -(2**31) <= value < 2**31 else "i64"
        return f"{kind}:16" if value % 16 == 0 else kind
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no JIT type for {value!r}")


def _launch_hint(param: Any, value: Any) -> str:
    """:func:`jit_hint` of ``value`` as the JIT specialises kernel parameter ``param`` (a ``KernelParam``)."""
    hint = jit_hint(value)
    if param.do_not_specialize or (param.do_not_specialize_on_alignment and hint.endswith(":16")):
        return hint.split(":")[0]
    return hint


def launch_spec(
    name: str,
    fn: Any,
    args: dict[str, Any],
    num_warps: int = 4,
    num_stages: int = 3,
    uses_dot: bool = False,
    work: Work | None = None,
    ci: bool = False,
    maxnreg: int | None = None,
) -> KernelSpec:
    """A spec from the arguments a launcher passes, by name: pointers as their type (``"*bf16"``), ints and floats
    as their values, constexprs as their values (which parameters are constexpr is read from ``fn``). Ints get the
    JIT's launch-time specialisation (:func:`jit_hint`; none for the kernel's ``do_not_specialize`` arguments, no
    divisibility for its ``do_not_specialize_on_alignment`` ones), so the spec compiles what the JIT would compile
    for that launch."""
    names = [p.name for p in fn.params]
    unknown = set(args) - set(names)
    missing = set(names) - set(args)
    if unknown or missing:
        raise ValueError(f"{name}: unknown arguments {sorted(unknown)}, missing {sorted(missing)}")
    constexprs = {p.name: args[p.name] for p in fn.params if p.is_constexpr}
    signature = {p.name: _launch_hint(p, args[p.name]) for p in fn.params if not p.is_constexpr}
    return KernelSpec(name, fn, signature, constexprs, num_warps, num_stages, uses_dot, work, ci, maxnreg)


@dataclass
class CompileReport:
    """Resource usage of one compiled configuration, read from its cubin."""

    name: str
    arch: int
    registers: int
    spill_bytes: int  # stack frame + local memory per thread: > 0 means register spills
    shared_bytes: int
    matrix_instruction: bool | None  # None when the kernel has no tl.dot

    @property
    def spills(self) -> bool:
        return self.spill_bytes > 0


def _triton_binary(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not shipped with this Triton at {path}")
    return str(path)


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run(
            [_triton_binary("cuobjdump"), *flags, str(path)], check=True, capture_output=True, text=True
        ).stdout


def _resource_usage(cubin: bytes) -> dict[str, int]:
    out = _cuobjdump(cubin, "--dump-resource-usage")
    usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    if "REG" not in usage:
        raise RuntimeError(f"could not read the resource usage from cuobjdump:\n{out}")
    return {k: int(v) for k, v in usage.items()}


def disassemble(cubin: bytes) -> str:
    """The SASS of a cubin (``cuobjdump -sass``)."""
    return _cuobjdump(cubin, "-sass")


_COMPILED: dict[tuple, Any] = {}  # one compilation per distinct (kernel, signature, constexprs, options, arch)


def _compile_key(spec: KernelSpec, arch: int) -> tuple:
    fn = spec.fn
    return (
        f"{fn.fn.__module__}.{fn.__name__}",
        tuple(sorted(spec.signature.items())),
        tuple(sorted((k, repr(v)) for k, v in spec.constexprs.items())),
        spec.num_warps,
        spec.num_stages,
        spec.maxnreg,
        arch,
    )


def compile_kernel(spec: KernelSpec, arch: int):
    """Compile one configuration for ``sm_{arch}``; returns Triton's compiled kernel (``.asm`` holds ptx, cubin).
    Specs that differ only in name or work are compiled once per process."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    key = _compile_key(spec, arch)
    if key in _COMPILED:
        return _COMPILED[key]
    missing = set(spec.fn.arg_names) - set(spec.signature) - set(spec.constexprs)
    if missing:
        raise ValueError(f"{spec.name}: no type or constexpr value for arguments {sorted(missing)}")
    constexprs = dict(spec.constexprs)
    signature, attrs = {}, {}
    for index, name in enumerate(spec.fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        kind, _, hint = spec.signature[name].partition(":")
        if hint == "1":  # the JIT turns an int equal to 1 into a constant
            constexprs[name] = 1
            signature[name] = "constexpr"
            continue
        signature[name] = kind
        if hint == "16":
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif hint:
            raise ValueError(f"{spec.name}: unknown hint {hint!r} for {name} (use 1 or 16)")
    source = ASTSource(fn=spec.fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={
            "num_warps": spec.num_warps,
            "num_stages": spec.num_stages,
            **({"maxnreg": spec.maxnreg} if spec.maxnreg else {}),
        },
    )
    _COMPILED[key] = compiled
    return compiled


def cubin_usage(cubin: bytes) -> tuple[int, int, int]:
    """(registers, spill bytes, shared bytes) of a compiled kernel: spills are the stack frame plus local memory
    per thread (ptxas puts spilled registers on the stack frame)."""
    usage = _resource_usage(cubin)
    return usage["REG"], usage.get("STACK", 0) + usage.get("LOCAL", 0), usage.get("SHARED", 0)


def compile_spec(spec: KernelSpec, arch: int) -> CompileReport:
    """Compile one configuration for ``sm_{arch}`` and report its registers, spills and shared memory."""
    compiled = compile_kernel(spec, arch)
    matrix = None
    if spec.uses_dot:
        matrix = MATRIX_INSTRUCTIONS[arch] in compiled.asm["ptx"]
    return CompileReport(spec.name, arch, *cubin_usage(compiled.asm["cubin"]), matrix)


def loop_report(spec: KernelSpec, arch: int = LOOP_ARCH) -> dict:
    """The static loop report of one spec (``zoo/kernels/_sass.py``): its loops, the hot one counted by kind, and
    with ``spec.work`` the instructions, FMAs and MMAs per unit of useful work at the benchmark shape."""
    from zoo.kernels._sass import parse_sass, static_cost

    compiled = compile_kernel(spec, arch)
    resources = compile_spec(spec, arch)
    functions = parse_sass(disassemble(compiled.asm["cubin"]))
    name = spec.fn.__name__
    instructions = functions.get(name) or next(iter(functions.values()))
    work = spec.work
    try:
        cost = static_cost(
            instructions,
            spec.num_warps,
            None if work is None else work.per_program,
            () if work is None else work.trips,
        )
    except ValueError as error:
        raise ValueError(f"{spec.name}: {error}") from error
    return {
        "name": spec.name,
        "kernel": name,
        "case": None if work is None else work.case,
        "unit": None if work is None else work.unit,
        "arch": arch,
        "num_warps": spec.num_warps,
        "registers": resources.registers,
        "spill_bytes": resources.spill_bytes,
        "shared_bytes": resources.shared_bytes,
        "units_per_program": None if work is None else work.per_program,
        "trips": None if work is None else list(work.trips),
        "work_formula": None if work is None else work.formula,
        **cost,
    }


def all_specs() -> list[KernelSpec]:
    """The compile specs of every kernel module."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("ahead-of-time compilation needs the real Triton JIT: unset TRITON_INTERPRET")
    from importlib import import_module

    # by module path: `kernels` exports the function `fftconv`, which shadows the module of that name
    modules = [
        import_module(f"zoo.kernels.{name}")
        for name in (
            "rational",
            "norm_rational",
            "gelu_grn",
            "batch_norm_add",
            "batch_norm_se",
            "dwconv",
            "ssm",
            "fftconv",
            "neighborhood",
        )
    ]
    return [spec for module in modules for spec in module.aot_specs()]


# ------------------------------------------------------------------------------------------------ the loop report


# What one SM of an H100 / H200 (sm_90) holds at once: the occupancy limits of the CUDA programming guide.
SM90_REGISTERS = 65536  # 32-bit registers per SM
SM90_REGISTER_UNIT = 256  # registers are given to a warp in blocks of this many (8 per thread)
SM90_MAX_WARPS = 64
SM90_MAX_CTAS = 32
SM90_SHARED_BYTES = 228 * 1024  # per SM, of which each resident CTA also reserves 1 KB
SM90_CTA_RESERVED_SHARED = 1024


def warps_per_sm(registers: int, num_warps: int, shared_bytes: int) -> int:
    """The theoretical occupancy of a kernel on sm_90: warps resident per SM, the fewest that its registers per
    thread, warps per program and shared memory per program allow (64 at most). A memory-bound kernel with few
    resident warps must keep many loads in flight per warp to reach the bandwidth; the report cannot see whether it
    does."""
    per_warp = -(-registers * 32 // SM90_REGISTER_UNIT) * SM90_REGISTER_UNIT
    ctas = min(SM90_MAX_CTAS, SM90_MAX_WARPS // num_warps, SM90_REGISTERS // max(per_warp * num_warps, 1))
    if shared_bytes:
        ctas = min(ctas, SM90_SHARED_BYTES // (shared_bytes + SM90_CTA_RESERVED_SHARED))
    return ctas * num_warps


def _occupancy(row: dict) -> int:
    return warps_per_sm(row["registers"], row["num_warps"], row["shared_bytes"])


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _hot_summary(hot: dict) -> tuple[str, str, str, str]:
    """(FFMA, MMA, memory, overhead) cells of a hot region."""
    ffma = str(hot["ffma"]) + (f" + {hot['hfma2']} HFMA2" if hot["hfma2"] else "")
    mma = ", ".join(f"{n} {op}" for op, n in hot["mma"].items()) or "-"
    memory = ", ".join(f"{n} {op}" for op, n in hot["memory"].items()) or "-"
    cats = hot["categories"]
    overhead = f"{hot['overhead']} ({cats['int']} int, {cats['pred']} pred, {cats['move']} mov, {cats['const']} c)"
    return ffma, mma, memory, overhead


_TILE_TOKEN = re.compile(r"^(?:[A-Z]\d+|w\d+)$")  # P64, C32, T8, N16, L128, D256, B256, w4: a configuration


def _variant_and_config(name: str) -> tuple[str, str]:
    """("_dwconv_kernel[bf16,channels_last,fwd]", "P64,C32,w4") from a spec name: the kernel and what it computes,
    and the tile configuration (the autotuner's choice)."""
    kernel, _, rest = name.partition("[")
    tokens = rest.split("]", 1)[0].split(",")
    variant = [t for t in tokens if not _TILE_TOKEN.match(t)]
    return f"{kernel}[{','.join(variant)}]", ",".join(t for t in tokens if _TILE_TOKEN.match(t)) or "-"


HOW_TO_READ = """\
No GPU is involved: each spec is compiled for sm_90 with the launch-time specialisations the JIT makes at the
case's shape (`scripts/benchmark.py`'s cases), and its SASS is read (`zoo/kernels/_sass.py`).

How to read it. `hot` is the region that issues the most instructions per program: a loop (its address range in
the SASS), or `top` (the code outside loops) where the compiler left no loop or the loop is short. The hot
columns count one pass through its body, per thread: all instructions, FFMA (and HFMA2), tensor-core
instructions with their shapes, loads and stores with their width in bits per thread, and the overhead
(integer, predicate, move and constant-bank instructions); `instr/FMA` is the body's instructions per FMA. The
per-unit columns weigh every loop of the nest by its trip count at the case's shape and divide by the useful work
one thread covers:

    instr/unit = (top + sum over loops L of own(L) x runs(L)) / (units per program / (32 x num_warps))

where own(L) are the loop's instructions outside its inner loops and runs(L) the product of the trip counts of
its depth and those above. A unit is useful work: a multiply-add of a tap that lands on the map (convolutions),
a query-key pair inside a window (attention), an element (elementwise kernels), a mode-position term (S4D).
Padded taps, masked lanes, idle channels and wasted logits are cost, not units: `FMA/unit` above the op's
arithmetic per unit, or `MMA MAC/unit` above the dense work per pair (2 x head_dim for attention), is work
on padding or done twice. `share` is the hot region's part of all the program's instructions. Each row of the
JSON also holds its loops, trip counts, the formula with its numbers, how the units were counted, registers
and opcode counts.

`warps/SM` is the theoretical occupancy on sm_90: the warps that fit on one SM at once given the program's
registers per thread (allocated 8 at a time), warps and shared memory (at most 64; `warps_per_sm` in
zoo/kernels/_aot.py). A memory-bound kernel with few of them hides the memory's latency only if each warp keeps
several loads in flight.

What it cannot see: every instruction counts one, whatever its latency or throughput; memory stalls, achieved
occupancy, cache hits and bank conflicts are invisible, and so is the tensor cores' own time; both sides of a
branch outside loops are counted. Compare versions of a kernel with it; time them on a GPU
(`scripts/benchmark.py`).
"""


def render_loop_table(data: dict) -> str:
    """The markdown of ``benchmarks/static/README.md`` from the report's JSON."""
    rows = data["specs"]
    lines = [
        "# Static loop report (sm_90 SASS)",
        "",
        f"Generated by `{data['command']}` from `{REPORT_NAME}.json` (triton {data['triton']}; do not edit by hand).",
        HOW_TO_READ,
        "## Per kernel and case: the configuration with the fewest instructions per unit",
        "",
        "The autotuner chooses among a kernel's configurations on the GPU; `range` spans all of them.",
        "",
        "| kernel [variant] | case | unit | best of | config | hot | instr | FFMA | MMA | memory | overhead "
        "| instr/FMA "
        "| instr/unit | range | FMA/unit | MMA MAC/unit | warps/SM |",
        "|---|---|---|---:|---|---|---:|---:|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((_variant_and_config(row["name"])[0], row["case"]), []).append(row)
    for (variant, case), group in groups.items():
        best = min(group, key=lambda r: r["per_unit"]["instructions"])
        values = [r["per_unit"]["instructions"] for r in group]
        hot = best["hot"]
        ffma, mma, memory, overhead = _hot_summary(hot)
        lines.append(
            f"| `{variant}` | {case} | {best['unit']} | {len(group)} | {_variant_and_config(best['name'])[1]} | "
            f"{hot['where']} | "
            f"{hot['instructions']} | {ffma} | {mma} | {memory} | {overhead} | {_fmt(hot['instructions_per_fma'])} | "
            f"{_fmt(best['per_unit']['instructions'])} | {_fmt(min(values))}-{_fmt(max(values))} | "
            f"{_fmt(best['per_unit']['fma'], 2)} | {_fmt(best['per_unit']['mma_macs'], 1)} | {_occupancy(best)} |"
        )
    lines += [
        "",
        "## Every configuration",
        "",
        "| spec | case | regs | warps/SM | hot | runs | instr | FFMA | MMA | memory | instr/FMA | share | instr/unit "
        "| FMA/unit | MMA MAC/unit | units/thread |",
        "|---|---|---:|---:|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        hot = row["hot"]
        ffma, mma, memory, _ = _hot_summary(hot)
        lines.append(
            f"| `{row['name'].split('@')[0]}` | {row['case']} | {row['registers']} | {_occupancy(row)} | "
            f"{hot['where']} | "
            f"{_fmt(hot['runs_per_program'], 2)} | {hot['instructions']} | {ffma} | {mma} | {memory} | "
            f"{_fmt(hot['instructions_per_fma'])} | {_fmt(hot['share'], 2)} | "
            f"{_fmt(row['per_unit']['instructions'])} | "
            f"{_fmt(row['per_unit']['fma'], 2)} | {_fmt(row['per_unit']['mma_macs'], 1)} | "
            f"{_fmt(row['units_per_thread'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def _report_json(data: dict) -> str:
    """The report as JSON with one line per spec (a change to a kernel shows as a change to its rows)."""
    head = json.dumps({k: v for k, v in data.items() if k != "specs"})[:-1]
    rows = ",\n".join(json.dumps(row) for row in data["specs"])
    return f'{head}, "specs": [\n{rows}\n]}}\n'


def _print_loop_row(row: dict) -> None:
    hot = row["hot"]
    _, mma, memory, _ = _hot_summary(hot)
    per_unit = row.get("per_unit") or {}
    print(
        f"{row['name']:<80} {hot['where']:<20} {hot['instructions']:>5} {hot['fma']:>4} "
        f"{_fmt(hot['instructions_per_fma']):>7} {_fmt(per_unit.get('instructions')):>9} "
        f"{_fmt(per_unit.get('fma'), 2):>7}  {mma}; {memory}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Compile every spec for every target and print a table (or JSON lines with ``--json``); with ``--loops``
    the static loop report of the specs with a benchmark shape."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object per configuration")
    parser.add_argument(
        "--filter", action="append", default=[], help="only specs whose name contains this text (repeatable: any)"
    )
    parser.add_argument("--ci", action="store_true", help="only the specs the tests compile (ci=True)")
    parser.add_argument("--loops", action="store_true", help="the static loop report (sm_90) of the benchmark specs")
    parser.add_argument("--all", action="store_true", help="with --loops: every spec, also those without a shape")
    parser.add_argument(
        "--write", type=Path, default=None, help=f"with --loops: write {REPORT_NAME}.json and README.md"
    )
    parser.add_argument("--list", action="store_true", help="list the specs (name, ci, case) without compiling")
    args = parser.parse_args(argv)
    specs = [
        s for s in all_specs() if (s.ci or not args.ci) and (not args.filter or any(f in s.name for f in args.filter))
    ]
    if args.list:
        for spec in specs:
            case = None if spec.work is None else spec.work.case
            print(json.dumps({"name": spec.name, "ci": spec.ci, "case": case}) if args.json else spec.name)
        return
    if args.loops:
        rows = []
        if not args.json:
            print(f"{'spec':<80} {'hot':<20} {'instr':>5} {'FMA':>4} {'i/FMA':>7} {'i/unit':>9} {'FMA/u':>7}  hot body")
        for spec in specs:
            if spec.work is None and not args.all:
                continue
            row = loop_report(spec)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                _print_loop_row(row)
        if args.write:
            import triton

            command = " ".join(
                [
                    "python -m zoo.kernels._aot --loops",
                    *(f"--filter '{f}'" for f in args.filter),
                    "--write",
                    str(args.write),
                ]
            )
            rows = [row for row in rows if row["case"] is not None]  # --all adds rows without a shape: not written
            data = {"command": command, "triton": triton.__version__, "arch": LOOP_ARCH, "specs": rows}
            args.write.mkdir(parents=True, exist_ok=True)
            (args.write / f"{REPORT_NAME}.json").write_text(_report_json(data))
            (args.write / "README.md").write_text(render_loop_table(data))
        return
    if not args.json:
        print(f"{'kernel':<56} {'arch':>5} {'regs':>5} {'spill B':>8} {'smem B':>7} {'mma':>5}")
    for spec in specs:
        for arch in TARGETS:
            report = compile_spec(spec, arch)
            if args.json:
                print(json.dumps(asdict(report)), flush=True)
            else:
                mma = "-" if report.matrix_instruction is None else str(report.matrix_instruction)
                print(
                    f"{report.name:<56} sm_{arch:<2} {report.registers:>5} {report.spill_bytes:>8} "
                    f"{report.shared_bytes:>7} {mma:>5}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
