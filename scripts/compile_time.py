"""What a model's first step compiles, and how long each compile takes, measured on a machine without a GPU.

    python scripts/compile_time.py unireplknet_t                    # one training step, batch 2
    python scripts/compile_time.py inceptionnext_t kat_t --batch 32   # each model in a process of its own
    python scripts/compile_time.py nat_m --inference --out benchmarks/results/cpu
    python scripts/compile_time.py inceptionnext_t --img-size 384 --arch 80   # fine-tuning size, an A100
    python scripts/compile_time.py unireplknet_t --precompile 2   # train.py's precompile pass first, 2 threads

The first step of a model on a GPU compiles every Triton kernel variant it launches, one after another on one CPU
core (cached on disk afterwards): a minute for ``unireplknet_t``, most of it in the depthwise weight gradients.
This script runs one step of an image model with ``backend="triton"`` through Triton's real compile path for a
stand-in sm_90 GPU (scripts/host_time.py: CPU tensors, launch calls that do nothing, an empty Triton cache of its
own), and lists each compile: the kernel, its constexprs, the runtime arguments the JIT specialised (a value of 1
becomes a constant; ``/16``: a pointer or integer divisible by 16), its registers and spilled bytes per thread
(read from the cubin), and the seconds it took. ``--img-size`` and ``--arch`` (80: an A100, 90: an H100 / H200)
show what another input size or GPU compiles: **Spills** lists every variant that spilled (the kernels' ahead-of-time
specs cover the models' usual sizes; a size they miss can take a tile the specs never compiled).

**Compiled more than once** lists kernels compiled with the same constexprs but different specialisations, and
the arguments that differed: each is a second compile of what is nearly the same code, typically an argument
that is 1 in some calls (one strip on a small batch, an undilated branch) and larger in others, or a size
divisible by 16 in some. List such an argument in the kernel's ``do_not_specialize`` (or
``do_not_specialize_on_alignment``) when the constant buys nothing in the compiled code (compare the loop report,
``python -m zoo.kernels._aot --loops``), as ``_dwconv_wgrad_kernel`` does with ``strips`` and the Inception
mixer's kernels with their sizes.

Compile times depend on this machine's CPU and the Triton version (printed); the kernels and their count do not.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __name__ == "__main__":  # a program: Triton's compiled path, set before triton is imported (not on import)
    os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import triton  # noqa: E402
import triton.compiler  # noqa: E402
from _host import commit, cpu_name, write_results  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from zoo.kernels._aot import cubin_usage  # noqa: E402


@dataclass
class Compile:
    """One kernel variant compiled: its constexprs and options (warps, stages; an autotuner compiles each of its
    configurations), the runtime arguments specialised at launch, the seconds."""

    kernel: str
    seconds: float
    constexprs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    specialised: dict = field(default_factory=dict)  # argument -> "=1" (a constant) or "/16" (divisible by 16)
    registers: int = 0
    spill_bytes: int = 0


OPTIONS = ("num_warps", "num_stages", "maxnreg")  # the compile options that tell an autotuner's configurations apart


def _describe(src) -> tuple[dict, dict]:
    """(constexprs, specialised runtime arguments) of an ``ASTSource`` about to be compiled."""
    params = src.fn.params
    constexprs, specialised = {}, {}
    for key, value in src.constants.items():
        index = key[0] if isinstance(key, tuple) else key
        param = params[index] if isinstance(index, int) else next(p for p in params if p.name == index)
        if param.is_constexpr:
            constexprs[param.name] = (
                value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
            )
        else:
            specialised[param.name] = f"={value}"
    for key, attrs in src.attrs.items():
        index = key[0] if isinstance(key, tuple) else key
        if any(name == "tt.divisibility" for name, _ in attrs):
            specialised.setdefault(params[index].name, "/16")
    return constexprs, specialised


def record_compiles(echo: bool = False) -> list[Compile]:
    """From now on, time every Triton compile of this process into the returned (growing) list; ``echo``: also
    print each to stderr as it finishes (progress: a model's first step compiles for up to minutes)."""
    compiles: list[Compile] = []
    compile_fn = triton.compiler.compile

    def timed(src, *args, **kwargs):
        start = time.perf_counter()
        result = compile_fn(src, *args, **kwargs)
        if hasattr(src, "fn"):  # an ASTSource (a kernel), not IR text
            seconds = time.perf_counter() - start
            constexprs, specialised = _describe(src)
            options = {k: v for k, v in (kwargs.get("options") or {}).items() if k in OPTIONS and v is not None}
            registers, spill_bytes, _ = cubin_usage(result.asm["cubin"])
            compiles.append(Compile(src.fn.__name__, seconds, constexprs, options, specialised, registers, spill_bytes))
            if echo:
                print(f"  {compiles[-1].seconds:6.1f} s  {src.fn.__name__}", file=sys.stderr, flush=True)
        return result

    triton.compiler.compile = timed  # JITFunction looks it up here when it first compiles
    return compiles


def compiled_more_than_once(compiles: list[Compile]) -> list[dict]:
    """Kernels compiled more than once with the same constexprs and options: each group's compiles, and the runtime
    arguments whose specialisation differs between them (what ``do_not_specialize`` would merge)."""
    groups: dict[str, list[Compile]] = {}
    for c in compiles:
        groups.setdefault(c.kernel + json.dumps([c.constexprs, c.options], sort_keys=True), []).append(c)
    found = []
    for group in groups.values():
        if len(group) < 2:
            continue
        names = sorted({name for c in group for name in c.specialised})
        differing = [name for name in names if len({c.specialised.get(name, "") for c in group}) > 1]
        found.append(
            dict(
                kernel=group[0].kernel,
                constexprs=group[0].constexprs,
                options=group[0].options,
                compiles=len(group),
                seconds=round(sum(c.seconds for c in group), 2),
                differing={name: [c.specialised.get(name, "-") for c in group] for name in differing},
            )
        )
    return found


def first_step(
    name: str, batch: int, train: bool, img_size: int | None = None, precompile_workers: int = 0
) -> tuple[list[Compile], dict | None]:
    """Compile what one step of model ``name`` (``backend="triton"``, bf16 autocast, channels_last, an image batch
    of the model's input size, or ``img_size``) launches; the compiles in order (as they finish), and with
    ``precompile_workers`` the precompile pass that ran first (:func:`zoo.training.step.precompile`, that many
    threads): its compiles queued, its seconds, and the compiles the step itself then made."""
    import zoo
    from zoo.training.step import precompile

    compiles = record_compiles(echo=True)
    model = zoo.create_model(name, backend="triton")
    cfg = getattr(model, "pretrained_cfg", {})
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    if img_size is not None and img_size != size[-1]:
        size = (size[0], img_size, img_size)
        if cfg.get("fixed_input_size"):  # a ViT's position embedding: built for the size
            model = zoo.create_model(name, backend="triton", img_size=img_size)
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(batch, *size).to(memory_format=torch.channels_last)
    model.train(train)

    def forward_loss() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16), nullcontext() if train else torch.no_grad():
            return model(images).float().sum()

    pass_ = None
    if precompile_workers:
        start = time.perf_counter()
        queued = precompile(forward_loss, model, precompile_workers)
        pass_ = dict(workers=precompile_workers, queued=queued, seconds=round(time.perf_counter() - start, 2))
        done = len(compiles)
    loss = forward_loss()
    if train:
        loss.backward()
    if pass_ is not None:
        pass_["step_compiles"] = len(compiles) - done
    return compiles, pass_


def _print_model(result: dict) -> None:
    compiles = result["compiles"]
    total = sum(c["seconds"] for c in compiles)
    print(
        f"\n{result['model']} ({result['step']}, batch {result['batch']}, {result['img_size']} px, sm_{result['arch']}): "
        f"{len(compiles)} compiles, {total:.1f} s"
    )
    if result.get("precompile"):
        p = result["precompile"]
        print(
            f"precompile: {p['queued']} compiles queued, {p['seconds']:.1f} s in {p['workers']} threads (the compiles' "
            f"own seconds add up to {total:.1f}); the step then compiled {p['step_compiles']}; first step in all "
            f"{result['seconds']:.1f} s"
        )
    print(
        "\n| s | kernel | constexprs | options | specialised to 1 | regs | spill B |\n|---:|---|---|---|---|---:|---:|"
    )
    for c in compiles:
        constexprs = ", ".join(f"{k}={v}" for k, v in c["constexprs"].items())
        options = ", ".join(f"{k}={v}" for k, v in c["options"].items())
        ones = ", ".join(k for k, v in c["specialised"].items() if v == "=1")
        print(f"| {c['seconds']:.1f} | {c['kernel']} | {constexprs} | {options} | {ones} | {c['registers']} | "
              f"{c['spill_bytes']} |")  # fmt: skip
    spilled = [c for c in compiles if c["spill_bytes"]]
    print("\nSpills: " + ("none" if not spilled else ""))
    for c in spilled:
        print(
            f"  {c['kernel']} {c['constexprs']} {c['options']}: {c['spill_bytes']} bytes at {c['registers']} registers"
        )
    if result["compiled_more_than_once"]:
        print("\nCompiled more than once (same constexprs and options):")
        for d in result["compiled_more_than_once"]:
            print(f"  {d['kernel']} x{d['compiles']} ({d['seconds']:.1f} s), differing: {d['differing']}")


def measure(
    name: str, batch: int, train: bool, img_size: int | None = None, arch: int = 90, precompile_workers: int = 0
) -> dict:
    """One model's first step in this process, compiled for ``sm_{arch}`` (its Triton cache must start empty: see
    :func:`main`), after a precompile pass in ``precompile_workers`` threads if not 0."""
    import host_time  # scripts/host_time.py: the stand-in driver

    host_time.STAND_IN_TARGET = GPUTarget("cuda", arch, 32)
    host_time.install_stand_in()
    start = time.perf_counter()
    compiles, pass_ = first_step(name, batch, train, img_size, precompile_workers)
    return dict(
        model=name,
        batch=batch,
        img_size=img_size or "default",
        arch=arch,
        step="training" if train else "inference",
        seconds=round(time.perf_counter() - start, 2),
        precompile=pass_,
        compiles=[asdict(c) | {"seconds": round(c.seconds, 2)} for c in compiles],
        compiled_more_than_once=compiled_more_than_once(compiles),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="registered image models, e.g. unireplknet_t")
    parser.add_argument("--batch", type=int, default=2, help="images per step (default %(default)s)")
    parser.add_argument("--inference", action="store_true", help="a forward without gradients, not a training step")
    parser.add_argument("--img-size", type=int, default=None, help="square images of this size (default: the model's)")
    parser.add_argument("--arch", type=int, choices=(80, 90), default=90, help="compile for sm_80 or sm_90 (default)")
    parser.add_argument(
        "--precompile",
        type=int,
        default=0,
        metavar="THREADS",
        help="first a precompile pass in this many threads (zoo.training.step.precompile; train.py's default)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write <cpu>-<date>-compile-time.json here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one model, JSON on stdout
    args = parser.parse_args(argv)
    if args.worker:
        result = measure(args.models[0], args.batch, not args.inference, args.img_size, args.arch, args.precompile)
        print(json.dumps(result))
        return 0
    results = dict(
        device=cpu_name(),
        date=_dt.date.today().isoformat(),
        torch=torch.__version__,
        triton=triton.__version__,
        python=platform.python_version(),
        commit=commit(),
        settings=dict(
            batch=args.batch,
            img_size=args.img_size,
            target=f"sm_{args.arch} (stand-in driver)",
            precompile_threads=args.precompile,
        ),
        models=[],
    )
    print(f"First-step compiles, {results['device']}, Triton {triton.__version__} (scripts/compile_time.py)")
    for name in args.models:  # a process and an empty Triton cache each: no model reuses another's compiles
        with tempfile.TemporaryDirectory(prefix="zoo-compile-time-") as cache:
            cmd = [sys.executable, __file__, name, "--batch", str(args.batch), "--arch", str(args.arch), "--worker"]
            cmd += ["--inference"] if args.inference else []
            cmd += ["--img-size", str(args.img_size)] if args.img_size else []
            cmd += ["--precompile", str(args.precompile)] if args.precompile else []
            env = dict(os.environ, TRITON_CACHE_DIR=cache)
            print(f"\n{name}: compiling ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)  # its progress: our stderr
        if proc.returncode != 0:
            raise SystemExit(f"{name}: the step failed (exit {proc.returncode})")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results["models"].append(result)
        _print_model(result)
    if args.out:
        size = f"-{args.img_size}px" if args.img_size else ""
        threads = f"-precompile{args.precompile}" if args.precompile else ""
        print(f"\nwrote {write_results(args.out, results, f'compile-time{size}-sm{args.arch}{threads}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
