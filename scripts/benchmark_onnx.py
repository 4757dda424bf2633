"""CPU latency of models exported to ONNX (onnxruntime) against PyTorch eager, on the same CPU and thread count.

Each model is built with random weights (UniRepLKNet and InceptionNeXt in their deployed forms, ``deploy=True``),
exported with :func:`zoo.deploy.onnx.export_onnx` (dynamic batch, default opset) and timed at one batch size:
PyTorch eager (``torch.inference_mode``, the ops' PyTorch paths, NCHW) and an onnxruntime CPU session (all graph
optimisations), both limited to ``--threads`` threads. The two runtimes are timed in alternating rounds, so that
load from other processes falls on both alike; each row reports the median (and the 10th / 90th percentiles) over
all calls. The outputs of the two runtimes are compared as well (max abs error, in the results).

    PYTHONPATH=. python scripts/benchmark_onnx.py                    # inceptionnext_t, unireplknet_t, 2 threads
    PYTHONPATH=. python scripts/benchmark_onnx.py --models kat_t --threads 4 --batch 8

Writes ``benchmarks/results/onnx/<cpu>-<date>-<N>threads.json`` (a subfolder: ``scripts/benchmark.py`` renders the GPU
results files of ``benchmarks/results/`` itself, whose layout differs) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._host import commit, cpu_name, load, percentile, write_results  # noqa: E402

DEFAULT_MODELS = ("inceptionnext_t", "unireplknet_t")
# model-name prefix -> constructor arguments of the deployed form
DEPLOY_ARGS = {"unireplknet": dict(deploy=True), "inceptionnext": dict(deploy=True)}


def _build(name: str, num_classes: int) -> tuple[torch.nn.Module, str]:
    """The model (random weights, eval mode, PyTorch paths) and its form: "deployed" or "as built"."""
    import zoo

    kwargs = next((args for prefix, args in DEPLOY_ARGS.items() if name.startswith(prefix)), {})
    model = zoo.create_model(name, num_classes=num_classes, backend="torch", **kwargs).eval()
    return model, "deployed" if kwargs.get("deploy") else "as built"


def bench_model(
    name: str, batch: int, img_size: int, threads: int, rounds: int, calls: int, warmup: int, workdir: Path
) -> list[dict]:
    """Export ``name``, then time PyTorch eager and onnxruntime in ``rounds`` alternating rounds of ``calls``."""
    import onnxruntime

    from zoo.deploy.onnx import DEFAULT_OPSET, export_onnx

    torch.manual_seed(0)
    model, form = _build(name, num_classes=1000)
    in_chans = getattr(model, "in_chans", 3)
    x = torch.randn(batch, in_chans, img_size, img_size)
    path = workdir / f"{name}.onnx"
    start = time.perf_counter()
    export_onnx(model, path, input_size=(in_chans, img_size, img_size))
    export_s = time.perf_counter() - start

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}

    def run_torch():
        with torch.inference_mode():
            return model(x)

    def run_ort():
        return session.run(None, feed)[0]

    max_error = float((torch.from_numpy(run_ort()) - run_torch()).abs().max())
    for _ in range(warmup):
        run_torch()
        run_ort()
    times: dict[str, list[float]] = {"pytorch-eager": [], "onnxruntime-cpu": []}
    for _ in range(rounds):
        for runtime, fn in (("pytorch-eager", run_torch), ("onnxruntime-cpu", run_ort)):
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                times[runtime].append(1e3 * (time.perf_counter() - start))
    eager_ms = statistics.median(times["pytorch-eager"])
    rows = []
    for runtime, values in times.items():
        ms = statistics.median(values)
        rows.append(
            {
                "model": name,
                "form": form,
                "runtime": runtime,
                "batch": batch,
                "img_size": img_size,
                "threads": threads,
                "ms": round(ms, 3),
                "ms_p10": round(percentile(values, 0.1), 3),
                "ms_p90": round(percentile(values, 0.9), 3),
                "images_per_s": round(1e3 * batch / ms, 2),
                "speedup_vs_eager": round(eager_ms / ms, 3),
                "calls": len(values),
                "max_abs_error_vs_eager": max_error,
                "export_s": round(export_s, 1),
                "opset": DEFAULT_OPSET,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, write the results file, print a table; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--threads", type=int, default=2, help="threads for both runtimes (default 2)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per runtime")
    parser.add_argument("--calls", type=int, default=4, help="timed calls per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx", help="results folder")
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime

    torch.set_num_threads(args.threads)
    load_before = load()
    rows = []
    with tempfile.TemporaryDirectory(prefix="zoo-onnx-bench-") as tmp:
        for name in args.models:
            rows += bench_model(
                name, args.batch, args.img_size, args.threads, args.rounds, args.calls, args.warmup, Path(tmp)
            )
    results = {
        "device": cpu_name(),
        "date": _dt.date.today().isoformat(),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": sys.version.split()[0],
        "commit": commit(),
        "models": rows,
    }
    path = write_results(args.out, results, f"{args.threads}threads")
    print(
        f"{results['device']}, {args.threads} threads, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )
    print("| model | runtime | batch | img | ms (median) | p10-p90 | images/s | vs eager | max abs err |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['img_size']} | {r['ms']:.1f} | "
            f"{r['ms_p10']:.1f}-{r['ms_p90']:.1f} | {r['images_per_s']:.1f} | {r['speedup_vs_eager']:.2f}x | "
            f"{r['max_abs_error_vs_eager']:.1e} |"
        )
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
