"""Ahead-of-time compilation of every kernel for GPU targets, on a machine without a GPU.

Each kernel module lists its configurations in ``aot_specs()``; this module compiles each one to a cubin for
sm_80 (A100) and sm_90 (H100) with ``triton.compile(ASTSource(...), target=GPUTarget(...))`` and reads the
resource usage (registers, spills) with the ``cuobjdump`` shipped inside Triton.

Run it as a program (the Triton interpreter must be OFF, so do not set ``TRITON_INTERPRET``)::

    python -m zoo.kernels._aot            # a table
    python -m zoo.kernels._aot --json     # one JSON object per line (used by the tests)
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
MATRIX_INSTRUCTIONS = {80: "mma.sync", 90: "wgmma"}


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


def _cuobjdump() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump is not shipped with this Triton at {path}")
    return str(path)


def _resource_usage(cubin: bytes) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run(
            [_cuobjdump(), "--dump-resource-usage", str(path)], check=True, capture_output=True, text=True
        ).stdout
    usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    if "REG" not in usage:
        raise RuntimeError(f"could not read the resource usage from cuobjdump:\n{out}")
    return {k: int(v) for k, v in usage.items()}


def compile_kernel(spec: KernelSpec, arch: int):
    """Compile one configuration for ``sm_{arch}``; returns Triton's compiled kernel (``.asm`` holds ptx, cubin)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

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
    return triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
    )


def compile_spec(spec: KernelSpec, arch: int) -> CompileReport:
    """Compile one configuration for ``sm_{arch}`` and report its registers, spills and shared memory."""
    compiled = compile_kernel(spec, arch)
    usage = _resource_usage(compiled.asm["cubin"])
    matrix = None
    if spec.uses_dot:
        matrix = MATRIX_INSTRUCTIONS[arch] in compiled.asm["ptx"]
    spill = usage.get("STACK", 0) + usage.get("LOCAL", 0)  # ptxas puts spilled registers on the stack frame
    return CompileReport(spec.name, arch, usage["REG"], spill, usage.get("SHARED", 0), matrix)


def all_specs() -> list[KernelSpec]:
    """The compile specs of every kernel module."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("ahead-of-time compilation needs the real Triton JIT: unset TRITON_INTERPRET")
    from importlib import import_module

    # by module path: `kernels` exports the function `fftconv`, which shadows the module of that name
    modules = [
        import_module(f"zoo.kernels.{name}") for name in ("rational", "dwconv", "ssm", "fftconv", "neighborhood")
    ]
    return [spec for module in modules for spec in module.aot_specs()]


def main() -> None:
    """Compile every spec for every target and print a table (or JSON lines with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object per configuration")
    parser.add_argument("--filter", default="", help="only kernels whose name contains this text")
    args = parser.parse_args()
    if not args.json:
        print(f"{'kernel':<56} {'arch':>5} {'regs':>5} {'spill B':>8} {'smem B':>7} {'mma':>5}")
    for spec in all_specs():
        if args.filter not in spec.name:
            continue
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
