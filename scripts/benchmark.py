"""Benchmark the zoo's ops (PyTorch reference, eager and under torch.compile, against the Triton kernels) and
models (training and inference images/s with each backend, beside their timm peers).

On a GPU, times with ``triton.testing.do_bench`` (median, CUDA events), reports achieved GB/s and the fraction
of the memory-bandwidth bound (measured device-to-device copy bandwidth, and the datasheet figure where the
device is known), writes ``benchmarks/results/<device>-<date>.json`` and regenerates ``benchmarks/README.md``.
On a CPU it runs small sizes (a smoke test: CI runs it; the Triton rows go through the interpreter and mean
nothing as timings).

    PYTHONPATH=. python scripts/benchmark.py                 # GPU: full sizes, writes the results file
    python scripts/benchmark.py --small --out /tmp/bench      # CPU smoke test
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

if not torch.cuda.is_available():  # the Triton rows run through the interpreter on a CPU-only machine
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

from kernels.rational import group_rational, group_rational_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASHEET_BANDWIDTH_GBPS = {  # HBM bandwidth from the vendors' datasheets, by device-name substring
    "H100 80GB HBM3": 3350.0,
    "H100 PCIe": 2000.0,
    "H200": 4800.0,
    "A100-SXM4-80GB": 2039.0,
    "A100-SXM4-40GB": 1555.0,
}


@dataclass
class OpRow:
    op: str
    case: str
    dtype: str
    pass_: str  # "fwd" or "fwd+bwd"
    impl: str  # "reference", "reference+compile", "triton"
    ms: float  # eager: one call after another, launch overhead included
    graph_ms: float | None  # device time: CUDA-graph replays, no launch gaps (GPU only)
    bytes_moved: int
    gbps: float  # from the device time where there is one
    fraction_of_copy_bw: float | None = None
    fraction_of_datasheet_bw: float | None = None
    note: str = ""


@dataclass
class ModelRow:
    model: str
    backend: str  # "triton", "torch" (the zoo's backends) or "timm" (a timm peer)
    mode: str  # "train" (forward, loss, backward, AdamW step) or "infer" (forward, no grad)
    batch: int
    img_size: int
    dtype: str  # the autocast dtype
    ms: float  # one step, eager
    images_per_s: float
    note: str = ""


@dataclass
class Results:
    device: str
    torch: str
    triton: str
    python: str
    commit: str
    date: str
    copy_bandwidth_gbps: float | None
    datasheet_bandwidth_gbps: float | None
    ops: list[OpRow] = field(default_factory=list)
    models: list[ModelRow] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ timing


def _time_ms(fn: Callable[[], object], device: torch.device, warmup_ms: int = 50, rep_ms: int = 200) -> float:
    """Median milliseconds of ``fn``: CUDA events via do_bench on a GPU, wall clock on a CPU."""
    if device.type == "cuda":
        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    fn()  # warm-up (compilation, caches)
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _graph_ms(fn: Callable[[], object], device: torch.device) -> float | None:
    """Median milliseconds of CUDA-graph replays of ``fn``: the device time without host launch overhead."""
    if device.type != "cuda":
        return None
    fn()  # compile / autotune outside the capture
    return float(triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median"))


def copy_bandwidth_gbps(device: torch.device) -> float | None:
    """Device-to-device copy bandwidth (bytes read + written), the practical memory-bound ceiling."""
    if device.type != "cuda":
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device).random_()  # 1 GiB, far beyond L2
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


# ------------------------------------------------------------------------------------------------ ops


def rational_cases(small: bool) -> list[tuple[str, tuple[int, ...], int]]:
    """(case name, shape of x, groups): KAT's MLP inputs at batch 128 (ViT-B widths 768 and 3072)."""
    if small:
        return [("B2xL17x48", (2, 17, 48), 8)]
    return [("B128xL197x768", (128, 197, 768), 8), ("B128xL197x3072", (128, 197, 3072), 8)]


def bench_rational(small: bool, dtype: torch.dtype, device: torch.device, compile_reference: bool) -> list[OpRow]:
    """Rows for zoo::group_rational: reference (eager, compiled) and Triton, forward and forward+backward."""
    rows = []
    for case, shape, groups in rational_cases(small):
        x = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
        a = torch.randn(1, 6, device=device, requires_grad=True)
        b = torch.randn(groups, 4, device=device, requires_grad=True)
        dy = torch.randn(shape, dtype=dtype, device=device)
        impls: dict[str, Callable] = {
            "reference": group_rational_reference,
            "triton": lambda x, a, b: group_rational(x, a, b, backend="triton"),
        }
        if compile_reference:
            impls["reference+compile"] = torch.compile(group_rational_reference, fullgraph=True)
        element = x.element_size() * x.numel()
        for impl, fn in impls.items():

            def forward(fn=fn):
                with torch.no_grad():
                    return fn(x, a, b)

            def forward_backward(fn=fn):
                return torch.autograd.grad(fn(x, a, b), (x, a, b), dy)

            for pass_, run, moved in (("fwd", forward, 2 * element), ("fwd+bwd", forward_backward, 5 * element)):
                ms = _time_ms(run, device)
                graph_ms = _graph_ms(run, device)
                note = "interpreter" if impl == "triton" and device.type == "cpu" else ""
                gbps = moved / ((graph_ms or ms) * 1e-3) / 1e9
                rows.append(OpRow("group_rational", case, str(dtype).removeprefix("torch."), pass_, impl, ms,
                                  graph_ms, moved, gbps, note=note))
    return rows


OPS = {"rational": bench_rational}

# (registered name, model kwargs, backend label): each zoo model with both backends, then its timm peer.
MODELS = [
    ("kat_t", {"backend": "triton"}, "triton"),
    ("kat_t", {"backend": "torch"}, "torch"),
    ("vit_tiny_patch16_224", {}, "timm"),
]


def bench_models(small: bool, dtype: torch.dtype, device: torch.device) -> list[ModelRow]:
    """Images/s of a training step (forward, cross-entropy, backward, AdamW) and of inference, under autocast.

    On a CPU (small sizes) the Triton backend would run through the interpreter: those rows are skipped.
    """
    import timm

    import zoo  # noqa: F401  (registers the zoo's models with timm)

    batch, img_size = (2, 32) if small else (128, 224)
    rows = []
    for name, kwargs, backend in MODELS:
        if backend == "triton" and device.type == "cpu":
            continue
        torch.manual_seed(0)
        model = timm.create_model(name, img_size=img_size, **kwargs).to(device)
        x = torch.randn(batch, 3, img_size, img_size, device=device)
        target = torch.randint(0, model.num_classes, (batch,), device=device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype):
                loss = torch.nn.functional.cross_entropy(model(x), target)
            loss.backward()
            optimizer.step()

        def infer_step():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
                return model(x)

        for mode, step in (("train", train_step), ("infer", infer_step)):
            model.train(mode == "train")
            ms = _time_ms(step, device, warmup_ms=2000, rep_ms=4000)  # steps of tens of ms: many of each
            rows.append(ModelRow(name, backend, mode, batch, img_size, str(dtype).removeprefix("torch."), ms,
                                 batch / (ms * 1e-3)))
    return rows


# ------------------------------------------------------------------------------------------------ output


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _gbps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} GB/s"


def render_markdown(results_dir: Path) -> str:
    """The benchmarks/README.md table, regenerated from every results file in ``results_dir``."""
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/benchmark.py` from the files in `results/` (do not edit by hand). Times are medians:",
        "`eager ms` of calls one after another (`triton.testing.do_bench`; host launch overhead included), `device ms`",
        "of CUDA-graph replays (`do_bench_cudagraph`; the GPU's own time). GB/s, `copy`, `datasheet` and the speed-up",
        "use the device time; bandwidth counts each input read once and each output written once; `copy` is the",
        "fraction of the measured device-to-device copy bandwidth, `datasheet` of the vendor's HBM figure.",
        "",
    ]
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text())
        lines += [
            f"## {data['device']} ({data['date']})",
            "",
            f"torch {data['torch']}, triton {data['triton']}, commit {data['commit']}; "
            f"copy bandwidth {_gbps(data['copy_bandwidth_gbps'])}, datasheet {_gbps(data['datasheet_bandwidth_gbps'])}. "
            f"File: `results/{path.name}`.",
            "",
        ]
        rows = data["ops"]
        if rows:
            lines += [
                "| op | case | dtype | pass | impl | eager ms | device ms | GB/s | copy | datasheet | triton speed-up "
                "| note |",
                "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
            ]

        def device_ms(r):
            return r["graph_ms"] or r["ms"]

        def pct(value):
            return "" if value is None else f"{100 * value:.0f}%"

        triton_ms = {(r["op"], r["case"], r["dtype"], r["pass_"]): device_ms(r) for r in rows if r["impl"] == "triton"}
        for r in rows:
            key = (r["op"], r["case"], r["dtype"], r["pass_"])
            speedup = f"{device_ms(r) / triton_ms[key]:.2f}x" if key in triton_ms and r["impl"] != "triton" else ""
            graph = "" if r["graph_ms"] is None else f"{r['graph_ms']:.3f}"
            lines.append(
                f"| {r['op']} | {r['case']} | {r['dtype']} | {r['pass_']} | {r['impl']} | {r['ms']:.3f} | {graph} | "
                f"{r['gbps']:.0f} | {pct(r['fraction_of_copy_bw'])} | {pct(r['fraction_of_datasheet_bw'])} | "
                f"{speedup} | {r['note']} |"
            )
        if rows:
            lines.append("")
        if data.get("models"):
            lines += [
                "Models (eager, autocast; `vs peer`: images/s over the timm peer's in the same mode):",
                "",
                "| model | backend | mode | batch | img | dtype | ms/step | images/s | vs peer |",
                "|---|---|---|---:|---:|---|---:|---:|---:|",
            ]
            peer = {r["mode"]: r["images_per_s"] for r in data["models"] if r["backend"] == "timm"}
            for r in data["models"]:
                ratio = f"{r['images_per_s'] / peer[r['mode']]:.2f}x" if r["mode"] in peer and r["backend"] != "timm" else ""
                lines.append(
                    f"| {r['model']} | {r['backend']} | {r['mode']} | {r['batch']} | {r['img_size']} | {r['dtype']} | "
                    f"{r['ms']:.2f} | {r['images_per_s']:.0f} | {ratio} |"
                )
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Results:
    """Run the benchmarks, write the results file and the markdown table, print a summary; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="*", default=sorted(OPS), choices=sorted(OPS), help="ops to time")
    parser.add_argument("--no-models", action="store_true", help="skip the model rows")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--small", action="store_true", help="tiny sizes (default on a CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile reference rows")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--commit", default=None,
                        help="commit to record (default: the short hash of HEAD, +dirty for uncommitted changes; "
                             "give it where the checkout has no .git)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="markdown table to regenerate (default: benchmarks/README.md for the default results "
                             "folder, else README.md inside --out)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = args.small or device.type == "cpu"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()}"
    datasheet = next((v for k, v in DATASHEET_BANDWIDTH_GBPS.items() if k in device_name), None)
    copy_bw = copy_bandwidth_gbps(device)
    results = Results(device_name, torch.__version__, triton.__version__, platform.python_version(),
                      args.commit or _commit(),
                      _dt.date.today().isoformat(), copy_bw, datasheet)
    dtype = getattr(torch, args.dtype)
    for op in args.ops:
        results.ops += OPS[op](small, dtype, device, compile_reference=not args.no_compile)
    if not args.no_models:
        results.models = bench_models(small, dtype, device)
    for row in results.ops:
        row.fraction_of_copy_bw = row.gbps / copy_bw if copy_bw else None
        row.fraction_of_datasheet_bw = row.gbps / datasheet if datasheet else None

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{_slug(device_name)}-{results.date}.json"
    payload = asdict(results)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    default_out = args.out.resolve() == (ROOT / "benchmarks" / "results").resolve()
    readme = args.readme or (ROOT / "benchmarks" / "README.md" if default_out else args.out / "README.md")
    readme.write_text(render_markdown(args.out))
    print(f"{'op':<16} {'case':<16} {'pass':<8} {'impl':<18} {'eager ms':>9} {'device ms':>9} {'GB/s':>8} {'copy':>6}")
    for r in results.ops:
        frac = "" if r.fraction_of_copy_bw is None else f"{100 * r.fraction_of_copy_bw:.0f}%"
        graph = "" if r.graph_ms is None else f"{r.graph_ms:.3f}"
        print(f"{r.op:<16} {r.case:<16} {r.pass_:<8} {r.impl:<18} {r.ms:>9.3f} {graph:>9} {r.gbps:>8.1f} {frac:>6}")
    for r in results.models:
        print(f"{r.model:<22} {r.backend:<7} {r.mode:<6} batch {r.batch:<4} {r.ms:>9.2f} ms {r.images_per_s:>9.0f} img/s")
    print(f"wrote {path} and {readme}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
