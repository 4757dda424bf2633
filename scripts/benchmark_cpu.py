"""CPU speed of the zoo's models beside their FLOP-matched timm peers, and of each op's CPU path beside its reference.

On CPU tensors ``backend="auto"`` runs each op's CPU path (the group-rational activation compiled into one loop,
zoo/kernels/rational_cpu.py; UniRepLKNet's large kernels in their fastest formulation, zoo/kernels/dwconv/_cpu.py;
blocked neighborhood attention, zoo/kernels/neighborhood_cpu.py; the InceptionNeXt mixer keeps its reference, no
formulation measured faster); ``backend="torch"`` the PyTorch references. A benchmark, not a test: nothing here
asserts a time.

    PYTHONPATH=. python scripts/benchmark_cpu.py models        # every model vs its peer: batch 1, 8; 1 and all threads
    PYTHONPATH=. python scripts/benchmark_cpu.py ops           # every op's CPU path vs its reference, model sizes
                                                               # (the mixer: a slice-writing candidate, not dispatched)
    PYTHONPATH=. python scripts/benchmark_cpu.py models --models inceptionnext_t --modes infer --batches 8 \
        --threads all --training-form                           # deployed vs training form vs the peer
    PYTHONPATH=. python scripts/benchmark_cpu.py first-call    # the rational's first-call (compile) cost
    PYTHONPATH=. python scripts/benchmark_cpu.py all --quick   # the targets only (batch 8, all threads): minutes

Models (random weights, 224 px): kat_t vs ``vit_tiny_patch16_224``; inceptionnext_t, unireplknet_t (deployed for
inference, ``deploy=True``; their training forms for the training step), nat_t and dinat_t vs ``convnext_tiny``.
Modes: ``infer`` (eval, ``torch.inference_mode``) and ``train`` (train mode, forward, cross-entropy, backward and an
SGD step). Timing is interleaved: after ``--warmup`` calls of each (the compile of the rational's CPU path
happens there), every repetition times one call of every model of the group in turn, so that load from other
processes falls on all alike; rows report the median (and 10th / 90th percentiles) over ``--reps`` repetitions and the
load average before and after the group. ``--reference`` adds our models on ``backend="torch"``.

Writes ``benchmarks/results/cpu/<cpu>-<date>-<what>.json`` and prints README rows (markdown).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._host import commit, cpu_name, load, percentile, write_results  # noqa: E402

# model -> (peer, constructor arguments for inference, for the training step)
MODELS = {
    "kat_t": ("vit_tiny_patch16_224", {}, {}),
    "inceptionnext_t": ("convnext_tiny", {"deploy": True}, {}),
    "unireplknet_t": ("convnext_tiny", {"deploy": True}, {}),
    "nat_t": ("convnext_tiny", {}, {}),
    "dinat_t": ("convnext_tiny", {}, {}),
}
TARGETS = {"kat_t": 1.1, "unireplknet_t": 1.1, "inceptionnext_t": 1.0}  # inference, batch 8: max ratio to the peer
OPS = ("rational", "dwconv", "inception", "neighborhood")


# ----------------------------------------------------------------------------------------------------------------
# Machine description and timing
# ----------------------------------------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, dict]:
    """Time every function of ``fns`` ``reps`` times, one call of each in turn per repetition, after ``warmup``
    calls of each. Returns, per name, the median / p10 / p90 wall milliseconds and the load around the group."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    load_before = load()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    load_after = load()
    return {
        name: {
            "ms": round(statistics.median(t), 3),
            "ms_p10": round(percentile(t, 0.1), 3),
            "ms_p90": round(percentile(t, 0.9), 3),
            "reps": reps,
            "load_before": load_before,
            "load_after": load_after,
        }
        for name, t in times.items()
    }


def _thread_counts(args) -> list[int]:
    return sorted({1 if t == "1" else os.cpu_count() or 1 for t in args.threads})


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def _build(name: str, mode: str, backend: str) -> torch.nn.Module:
    import timm

    import zoo

    if name not in MODELS:
        return timm.create_model(name)
    kwargs = MODELS[name][1] if mode == "infer" else MODELS[name][2]
    return zoo.create_model(name, backend=backend, **kwargs)


def _model_step(model: torch.nn.Module, mode: str, batch: int) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=gen)
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model(x)

        return infer
    model.train()
    labels = torch.randint(0, 1000, (batch,), generator=gen)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()

    return train


def run_models(args) -> list[dict]:
    """Every selected model beside its peer, per (mode, batch, threads) group, timed interleaved."""
    rows = []
    for mode in args.modes:
        for batch in args.batches:
            for threads in _thread_counts(args):
                torch.set_num_threads(threads)
                names = list(dict.fromkeys([m for m in args.models] + [MODELS[m][0] for m in args.models]))
                fns, forms = {}, {}
                for name in names:
                    backends = ["auto", "torch"] if (args.reference and name in MODELS) else ["auto"]
                    for backend in backends:
                        label = name if backend == "auto" else f"{name} (torch)"
                        torch.manual_seed(0)
                        fns[label] = _model_step(_build(name, mode, backend), mode, batch)
                        forms[label] = "deployed" if mode == "infer" and MODELS.get(name, ("", {}))[1] else "as built"
                    if args.training_form and mode == "infer" and MODELS.get(name, ("", {}))[1]:
                        label = f"{name} (training form)"  # the deployed model's training form, as built
                        torch.manual_seed(0)
                        fns[label] = _model_step(_build(name, "train", "auto"), mode, batch)
                        forms[label] = "training form"
                print(f"{mode} batch {batch} threads {threads}: {', '.join(fns)} (load {load()})", flush=True)
                timed = interleaved(fns, args.reps, args.warmup)
                for label, result in timed.items():
                    name = label.split(" ")[0]
                    peer = MODELS[name][0] if name in MODELS else None
                    row = {"model": label, "form": forms[label], "peer": peer, "mode": mode, "batch": batch}
                    row.update(threads=threads, **result)
                    if peer is not None:
                        row["ratio_to_peer"] = round(result["ms"] / timed[peer]["ms"], 3)
                    rows.append(row)
                    ratio = f"  {row['ratio_to_peer']:.2f}x {peer}" if peer else ""
                    print(f"  {label:<28} {result['ms']:9.1f} ms{ratio}", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------------------------


def _op_cases(batch: int) -> list[tuple[str, str, Callable[[str, bool], Callable[[], object]]]]:
    """(op, case label, make(backend, backward) -> step) at the benchmarked models' sizes."""
    from zoo.kernels.dwconv import dwconv2d, inception_dwconv2d
    from zoo.kernels.neighborhood import neighborhood_attention
    from zoo.kernels.rational import group_rational
    from zoo.layers.unireplknet import DILATED_BRANCHES

    gen = torch.Generator().manual_seed(0)
    cases = []

    def stepper(fn: Callable, tensors: list, backward: bool) -> Callable[[], object]:
        if not backward:

            def forward() -> None:
                with torch.no_grad():
                    fn(*tensors)

            return forward
        leaves = [t.detach().clone().requires_grad_(True) if isinstance(t, torch.Tensor) else t for t in tensors]
        out = fn(*leaves)
        dy = torch.randn(out.shape, generator=gen).to(memory_format=_format(out))

        def train() -> None:
            fn(*leaves).backward(dy)

        return train

    # the rational of kat_t: x [B, 197, 192] (act1) and [B, 197, 768] (act2), 8 groups
    for width in (192, 768):
        x = torch.randn(batch, 197, width, generator=gen)
        a, b = 0.3 * torch.randn(1, 6, generator=gen), 0.3 * torch.randn(8, 4, generator=gen)

        def make(backend, backward, x=x, a=a, b=b):
            return stepper(lambda *t: group_rational(*t, backend=backend), [x, a, b], backward)

        cases.append(("rational", f"x [{batch}, 197, {width}], 8 groups", make))
    # unireplknet_t's depthwise convolutions as the model feeds them (channels_last after the first block): the
    # deployed large kernels and 3 x 3; the training form's dilated branches of the 13 x 13 block at 28 x 28
    conv_cases = [(80, 56, 3, 1, "nchw"), (80, 56, 3, 1, "channels_last"), (160, 28, 13, 1, "channels_last")]
    conv_cases += [
        (320, 14, 13, 1, "channels_last"),
        (320, 14, 3, 1, "channels_last"),
        (640, 7, 13, 1, "channels_last"),
    ]
    conv_cases += [(160, 28, k, d, "channels_last") for k, d in zip(*DILATED_BRANCHES[13], strict=True) if d > 1]
    for channels, side, k, d, layout in conv_cases:
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(batch, channels, side, side, generator=gen).contiguous(memory_format=fmt)
        w, bias = torch.randn(channels, 1, k, k, generator=gen), torch.randn(channels, generator=gen)

        def make(backend, backward, x=x, w=w, bias=bias, d=d):
            return stepper(lambda *t: dwconv2d(*t, dilation=d, backend=backend), [x, w, bias], backward)

        cases.append(("dwconv", f"[{batch}, {channels}, {side}, {side}] {layout} k{k} d{d}", make))
    # inceptionnext_t's mixer (NCHW, gc = C / 8, 3 x 3 and 11-bands)
    for channels, side in ((96, 56), (192, 28), (384, 14), (768, 7)):
        gc = channels // 8
        x = torch.randn(batch, channels, side, side, generator=gen)
        weights = [torch.randn(gc, 1, 3, 3, generator=gen), torch.randn(gc, generator=gen)]
        weights += [torch.randn(gc, 1, 1, 11, generator=gen), torch.randn(gc, generator=gen)]
        weights += [torch.randn(gc, 1, 11, 1, generator=gen), torch.randn(gc, generator=gen)]

        def make(backend, backward, x=x, weights=weights):
            fn = inception_slices if backend == "auto" else (lambda *t: inception_dwconv2d(*t, backend="torch"))
            return stepper(fn, [x, *weights], backward)

        cases.append(("inception", f"[{batch}, {channels}, {side}, {side}] gc {gc}", make))
    # nat_t / dinat_t's attention (head_dim 32, k 7, bias)
    for side, heads, dilation in ((56, 2, 1), (28, 4, 1), (14, 8, 1), (7, 16, 1), (56, 2, 8), (28, 4, 4)):
        q, k, v = (torch.randn(batch, side, side, heads, 32, generator=gen) for _ in range(3))
        rpb = torch.randn(heads, 13, 13, generator=gen)

        def make(backend, backward, q=q, k=k, v=v, rpb=rpb, dilation=dilation):
            def fn(*t):
                return neighborhood_attention(*t[:3], 7, dilation=dilation, rpb=t[3], backend=backend)

            return stepper(fn, [q, k, v, rpb], backward)

        cases.append(("neighborhood", f"[{batch}, {side}, {side}] heads {heads} k7 d{dilation}", make))
    return cases


def inception_slices(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h) -> torch.Tensor:
    """The InceptionNeXt mixer without split / cat: the output allocated once, the identity channels copied in, each
    convolution written into its slice. A candidate measured against the reference (``ops --ops inception``), not
    dispatched: it did not measure faster (zoo/kernels/dwconv/_cpu.py)."""
    gc, k, band = weight_hw.shape[0], weight_hw.shape[-1], weight_w.shape[-1]
    first = x.shape[1] - 3 * gc
    out = torch.empty_like(x)
    out.narrow(1, 0, first).copy_(x.narrow(1, 0, first))
    for i, (weight, bias, padding) in enumerate(
        ((weight_hw, bias_hw, (k // 2, k // 2)), (weight_w, bias_w, (0, band // 2)), (weight_h, bias_h, (band // 2, 0)))
    ):
        out.narrow(1, first + i * gc, gc).copy_(
            F.conv2d(x.narrow(1, first + i * gc, gc), weight, bias, 1, padding, 1, gc)
        )
    return out


def _format(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def run_ops(args) -> list[dict]:
    """Each selected op's CPU path (``auto``) against its reference (``torch``), interleaved, per (batch, threads,
    forward / forward+backward)."""
    rows = []
    for batch in args.batches:
        cases = [c for c in _op_cases(batch) if c[0] in args.ops]
        for threads in _thread_counts(args):
            torch.set_num_threads(threads)
            for backward in [m == "train" for m in args.modes]:
                for op, label, make in cases:
                    fns = {"cpu path": make("auto", backward), "reference": make("torch", backward)}
                    timed = interleaved(fns, args.reps, args.warmup)
                    cpu, ref = timed["cpu path"], timed["reference"]
                    row = {"op": op, "case": label, "batch": batch, "threads": threads}
                    row["pass"] = "fwd+bwd" if backward else "fwd"
                    row["dispatched"] = op != "inception"  # the mixer's candidate is measured, not dispatched
                    row.update(cpu_path_ms=cpu["ms"], reference_ms=ref["ms"], speedup=round(ref["ms"] / cpu["ms"], 2))
                    row.update(reps=args.reps, load_before=cpu["load_before"], load_after=cpu["load_after"])
                    rows.append(row)
                    print(
                        f"  {op:<12} {label:<44} {row['pass']:<7} t{threads}  cpu path {cpu['ms']:9.3f} ms  "
                        f"reference {ref['ms']:9.3f} ms  x{row['speedup']:.2f}  (load {cpu['load_after'][0]})",
                        flush=True,
                    )
    return rows


# ----------------------------------------------------------------------------------------------------------------
# First-call cost of the compiled rational
# ----------------------------------------------------------------------------------------------------------------

_FIRST_CALL = """
import json, time, torch
torch.set_num_threads({threads})
from zoo.kernels.rational import group_rational
x = torch.randn({batch}, 197, 768); a = torch.randn(1, 6); b = torch.randn(8, 4)
out = {{}}
t = time.perf_counter()
with torch.no_grad():
    group_rational(x, a, b)
out["forward_first_s"] = time.perf_counter() - t
t = time.perf_counter()
with torch.no_grad():
    group_rational(x, a, b)
out["forward_second_s"] = time.perf_counter() - t
leaves = [t.clone().requires_grad_(True) for t in (x, a, b)]
t = time.perf_counter()
group_rational(*leaves).sum().backward()
out["train_first_s"] = time.perf_counter() - t
t = time.perf_counter()
group_rational(*leaves).sum().backward()
out["train_second_s"] = time.perf_counter() - t
print(json.dumps(out))
"""


def run_first_call(args) -> dict:
    """The group-rational's first calls (forward, then forward+backward) in fresh processes: with an empty Inductor
    cache (the compile from scratch) and again with the cache that run left (a later process's first call)."""
    threads = max(_thread_counts(args))
    code = _FIRST_CALL.format(threads=threads, batch=max(args.batches))
    results = {"threads": threads, "load_before": load()}
    with tempfile.TemporaryDirectory(prefix="zoo-inductor-cache-") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        for run in ("cold_cache", "warm_cache"):
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            results[run] = {k: round(v, 3) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
            print(f"  first call, {run}: {results[run]}", flush=True)
    results["load_after"] = load()
    return results


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------


def print_readme_rows(results: dict) -> None:
    """Markdown rows for the README: models beside their peers, then ops."""
    if results.get("models"):
        print("\n| model | form | peer | mode | batch | threads | ms (median) | peer ms | ratio | load |")
        print("|---|---|---|---|---:|---:|---:|---:|---:|---|")
        peers = {(r["model"], r["mode"], r["batch"], r["threads"]): r["ms"] for r in results["models"]}
        for r in results["models"]:
            if r["peer"] is None:
                continue
            peer_ms = peers[(r["peer"], r["mode"], r["batch"], r["threads"])]
            print(
                f"| {r['model']} | {r['form']} | {r['peer']} | {r['mode']} | {r['batch']} | {r['threads']} | "
                f"{r['ms']:.1f} | {peer_ms:.1f} | {r['ratio_to_peer']:.2f}x | "
                f"{r['load_before'][0]}-{r['load_after'][0]} |"
            )
    if results.get("ops"):
        print("\n| op | case | pass | threads | CPU path ms | reference ms | speedup |")
        print("|---|---|---|---:|---:|---:|---:|")
        for r in results["ops"]:
            print(
                f"| {r['op']} | {r['case']} | {r['pass']} | {r['threads']} | {r['cpu_path_ms']:.2f} | "
                f"{r['reference_ms']:.2f} | {r['speedup']:.2f}x |"
            )


def main(argv: list[str] | None = None) -> dict:
    """Run the selected benchmarks, write the results file, print README rows; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["models", "ops", "first-call", "all"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", nargs="+", default=["1", "all"], choices=["1", "all"])
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (median over them)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reference", action="store_true", help="also our models on backend='torch'")
    parser.add_argument(
        "--training-form",
        action="store_true",
        help="inference: also the training form of the models timed deployed (InceptionNeXt, UniRepLKNet)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the targets only: batch 8, all threads, inference, no neighborhood ops"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu", help="results folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.threads, args.modes = [8], ["all"], ["infer"]
        args.ops = [op for op in args.ops if op != "neighborhood"]
        args.models = [m for m in args.models if m in TARGETS]
    if args.reps < 5:
        parser.error("--reps must be at least 5 (medians of interleaved repetitions)")

    from zoo.kernels import rational_cpu

    started = time.perf_counter()
    results = {
        "device": cpu_name(),
        "date": _dt.date.today().isoformat(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_before": load(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "commit": commit(),
        "rational_compiled": rational_cpu.compile_enabled(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": {m: f"inference, batch 8, all threads: <= {r}x the peer" for m, r in TARGETS.items()},
    }
    print(f"{results['device']}, {os.cpu_count()} CPUs, torch {torch.__version__}, load {load()}", flush=True)
    if args.what in ("ops", "all"):
        results["ops"] = run_ops(args)
    if args.what in ("first-call", "all") and not args.quick:
        results["first_call"] = run_first_call(args)
    if args.what in ("models", "all"):
        results["models"] = run_models(args)
    results["load_average_after"] = load()
    results["seconds"] = round(time.perf_counter() - started, 1)
    path = write_results(args.out, results, args.what + ("-quick" if args.quick else ""))
    print_readme_rows(results)
    print(f"\nresults: {path} ({results['seconds']} s)")
    return results


if __name__ == "__main__":
    main()
