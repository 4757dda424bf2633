"""Neighborhood attention on the CPU: the gather reference (``backend="torch"``) against the blocked dense path that
``backend="auto"`` takes on CPU tensors (zoo/kernels/neighborhood_cpu.py), the block-size sweep that chose its
switch point between dense and blocked, and the NAT models. A benchmark, not a test: nothing here asserts a time.

    python scripts/benchmark_na_cpu.py ops              # the op alone at model sizes, reference vs the new path
    python scripts/benchmark_na_cpu.py sweep            # block lengths per axis (dense = the whole axis) at k = 7, and 1-D at k = 65
    python scripts/benchmark_na_cpu.py nat_m            # nat_m forward+backward, 64 digits at 8 px, one thread
    python scripts/benchmark_na_cpu.py infer            # nat_t / dinat_t inference at 224 px, batch 8, beside convnext_tiny

Times are medians over ``--reps`` runs after one warm-up: ``wall`` (what a user waits) and ``cpu`` (process CPU time:
on a machine shared with other work, one-thread CPU time is the steadier of the two; with two threads it is the sum
over both). ``--threads`` sets torch's intra-op threads (default: one for ``nat_m``, two otherwise).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.kernels.neighborhood import na_reference  # noqa: E402
from zoo.kernels.neighborhood_cpu import block_sizes, na_blocked  # noqa: E402

# (name, spatial, heads, kernel_size, dilation, is_causal, bias): the levels of NAT / DiNAT-tiny at 224 px (batch 8),
# nat_m's padded 7 x 7 maps on 8 px digits (batch 64) and a 1-D causal sequence.
OP_CASES = [
    ("nat 56x56 h2", (56, 56), 2, 7, 1, False, True, 8),
    ("nat 28x28 h4", (28, 28), 4, 7, 1, False, True, 8),
    ("nat 14x14 h8", (14, 14), 8, 7, 1, False, True, 8),
    ("nat 7x7 h16", (7, 7), 16, 7, 1, False, True, 8),
    ("dinat 56x56 d8 h2", (56, 56), 2, 7, 8, False, True, 8),
    ("dinat 28x28 d4 h4", (28, 28), 4, 7, 4, False, True, 8),
    ("digits 7x7 h2 B64", (7, 7), 2, 7, 1, False, True, 64),
    ("digits 7x7 h16 B64", (7, 7), 16, 7, 1, False, True, 64),
    ("1-D 2048 k65 causal h2", (2048,), 2, 65, 1, True, False, 4),
]


def measure(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of ``fn()`` over ``reps`` runs after one warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _inputs(spatial, heads, kernel_size, bias, batch, head_dim=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, *spatial, heads, head_dim, generator=gen) for _ in range(3))
    rpb = torch.randn(heads, *(2 * kernel_size - 1 for _ in spatial), generator=gen) if bias else None
    return q, k, v, rpb


def _step(attention: Callable, inputs, backward: bool) -> Callable[[], None]:
    """One forward (no autograd) or forward+backward of ``attention(q, k, v, rpb)``."""
    if not backward:

        def forward() -> None:
            with torch.no_grad():
                attention(*inputs)

        return forward
    leaves = [None if t is None else t.clone().requires_grad_(True) for t in inputs]
    # a dense output gradient, as a following layer passes (the gradient of .sum() is one expanded scalar)
    grad = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1))

    def train() -> None:
        attention(*leaves).backward(grad)

    return train


def _row(label: str, wall: float, cpu: float, base: tuple[float, float] | None = None) -> str:
    speedup = f"  x{base[1] / cpu:6.1f} (cpu)" if base else ""
    return f"  {label:<34} wall {wall * 1e3:9.1f} ms   cpu {cpu * 1e3:9.1f} ms{speedup}"


def run_ops(args) -> None:
    """The op alone: reference vs the blocked path, forward and forward+backward."""
    for name, spatial, heads, ks, ds, causal, bias, batch in OP_CASES:
        dims = len(spatial)
        ksd, dsd, csd = (ks,) * dims, (ds,) * dims, (causal,) * dims
        inputs = _inputs(spatial, heads, ks, bias, batch)
        blocks = block_sizes(spatial, ksd, dsd)
        print(f"{name}: batch {batch}, blocks {blocks}", flush=True)
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"
            reference = partial(na_reference, kernel_size=ks, dilation=ds, is_causal=causal)
            reference = measure(_step(lambda q, k, v, r, f=reference: f(q, k, v, rpb=r), inputs, backward), 1)
            print(_row(f"reference {mode}", *reference), flush=True)
            blocked = partial(na_blocked, kernel_size=ksd, dilation=dsd, is_causal=csd, scale=32**-0.5)
            new = measure(_step(lambda q, k, v, r, f=blocked: f(q, k, v, rpb=r), inputs, backward), args.reps)
            print(_row(f"blocked {mode}", *new, base=reference), flush=True)


def run_sweep(args) -> None:
    """Block lengths (the same on every axis; 'dense' = the whole axis, tried up to 4 windows) on square maps at
    k = 7 and on 1-D maps at k = 65."""
    cases = [((n, n), 4, 7, 8, (4, 6, 8, 10, 12, 16)) for n in (14, 21, 28, 42, 56)]
    cases += [((n,), 2, 65, 4, (16, 32, 48, 66, 96, 128)) for n in (256, 1024, 4096)]
    for spatial, heads, ks, batch, lengths in cases:
        dims = len(spatial)
        inputs = _inputs(spatial, heads, ks, True, batch)
        candidates = [t for t in lengths if t < spatial[0]] + ([spatial[0]] if spatial[0] <= 4 * ks else [])
        print(f"{'x'.join(map(str, spatial))} k{ks} heads {heads} batch {batch} bias", flush=True)
        for backward in (False, True):
            for t in candidates:
                attention = partial(
                    na_blocked,
                    kernel_size=(ks,) * dims,
                    dilation=(1,) * dims,
                    is_causal=(False,) * dims,
                    scale=32**-0.5,
                    blocks=(t,) * dims,
                )
                wall, cpu = measure(
                    _step(lambda q, k, v, r, f=attention: f(q, k, v, rpb=r), inputs, backward), args.reps
                )
                label = f"{'fwd+bwd' if backward else 'fwd'} t={'dense' if t == spatial[0] else t}"
                print(_row(label, wall, cpu), flush=True)


def _model_step(model, x, backward: bool) -> Callable[[], None]:
    if backward:
        return lambda: model(x).sum().backward()

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    return forward


def run_nat_m(args) -> None:
    """nat_m forward+backward on 64 digits (1 channel, 8 px, 10 classes): the reference vs the new path."""
    from zoo.models import create_model

    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    results = {}
    for backend in ("torch", "auto"):
        torch.manual_seed(0)
        model = create_model("nat_m", num_classes=10, in_chans=1, backend=backend)
        results[backend] = measure(_model_step(model, x, True), 1 if backend == "torch" else args.reps)
        print(_row(f"nat_m fwd+bwd backend={backend}", *results[backend], base=results.get("torch")), flush=True)


def run_infer(args) -> None:
    """Inference at 224 px, batch 8: nat_t and dinat_t (reference and new path) beside timm's convnext_tiny."""
    import timm

    from zoo.models import create_model

    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    base = measure(_model_step(timm.create_model("convnext_tiny").eval(), x, False), args.reps)
    print(_row("convnext_tiny", *base), flush=True)
    for name in ("nat_t", "dinat_t"):
        for backend in ("torch", "auto"):
            model = create_model(name, backend=backend).eval()
            wall, cpu = measure(_model_step(model, x, False), 1 if backend == "torch" else args.reps)
            print(
                _row(f"{name} backend={backend}", wall, cpu) + f"   {wall / base[0]:.2f} x convnext (wall)", flush=True
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["ops", "sweep", "nat_m", "infer"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads or (1 if args.what == "nat_m" else 2))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)
    {"ops": run_ops, "sweep": run_sweep, "nat_m": run_nat_m, "infer": run_infer}[args.what](args)


if __name__ == "__main__":
    main()
