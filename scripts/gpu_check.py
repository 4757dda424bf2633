"""One GPU check: correctness first, then the op rows, then the models, on one H100/H200 in under 5 minutes.

    PYTHONPATH=. scripts/gpu_check.sh --commit HASH --out DIR     # on a GPU machine (its own torch/triton, no pip)
    scripts/gpu_check.sh --smoke --out /tmp/check                  # CPU: the same path, tiny sizes, interpreter
    python scripts/gpu_check.py --report DIR/FILE.json             # the target lines of a results file again
    python scripts/gpu_check.py --readme-only                      # benchmarks/README.md from benchmarks/results/
    python scripts/gpu_check.py --freeze-baseline TAG [--baseline-rev REV]   # "today's" kernels, for later runs

Tiers, in this order (each family of each tier is one step; a failing step is reported and the next one runs;
``--families`` selects families and sets their order within each tier, :func:`by_priority`):

1. ``tests``: the ``gpu``-marked tests of each op file and of the training step (``TEST_FAMILIES``), one pytest
   process per file, all at once (``--smoke``: one process for all); their autotuning is shortened (this file is
   loaded as a pytest plugin, ``-p gpu_check``).
2. ``ops``: the benchmark rows the targets name (``OP_FAMILIES``): ``scripts/benchmark.py``'s ``bench_<op>``
   functions restricted to those cases and implementations, one case at a time, in one worker process.
3. ``models``: training and inference steps of the zoo's models beside their timm peers (``MODEL_FAMILIES``),
   through ``benchmark.bench_model``, in a second worker process.
4. ``readme``: the results table (``benchmark.render_markdown``) over ``benchmarks/results/`` and this run's file.

Warm-up (``Check.warm``). On a fresh machine the Triton cache is empty, and a tier's worker would compile its
kernels one after another, on one core, inside its families' budgets (seconds to tens of seconds each: the
depthwise weight gradients, the mixer, every autotuned configuration). So before the ops and the models tier time
anything, ``--warm`` processes (default half the CPU cores; at most ``WARM_PROCESSES``) run the tier's units once,
untimed, each unit in one process (a claim file per unit): every case of the op families with their Triton
implementations only, the steps (but the CUDA graph's) of every Triton-backed model and of every model that is
compiled (``train-compile``). They fill Triton's (and Inductor's) on-disk caches with the very kernels the
worker launches next (same code, shapes and device), on all cores at once. The warm-up ends when every unit is
done, or at ``WARM_SHARE`` of the time left to the tier (the processes are killed; what they compiled stays
cached); its results are discarded, and its summary (units warmed, failures, seconds) is the results file's
``check.warm``.

The results JSON (``benchmark.py``'s format, plus a ``check`` section: settings, every family's status, the
targets) is rewritten atomically after every row, so a run that is cut off keeps what it measured. The last
output lines are one line per target (``TARGETS``): the measured ratio and the threshold, "not met", or "not
measured" with the reason (its rows failed, ran out of time, or were never run).

Targets. ``TARGETS`` is the one table of the issues' performance targets; each is (name, issue, what is measured,
a ratio computed from the result rows, a threshold or None for "reported only"). A ratio over several cases or
modes is the worst of them, and every case it names must have been measured. Later work adds rows here and, where
new measurements are needed, to the tier tables: compiled modes and FlexAttention as implementations of an op
family (``impls``; "reference+compile" and "flex+compile" exist in benchmark.py), host time per call as a new
row kind. A model family's ``modes`` choose its rows: inference and the training step eager, captured in a CUDA
graph or compiled (``benchmark.TRAIN_MODES``); the compiled KAT rows are a family of their own, the last (each
model's first compile takes tens of seconds), so that a short run still measures the others.

"Faster than today's". ``--freeze-baseline TAG`` copies ``zoo/kernels/`` (of the working tree, or of
``--baseline-rev``) to ``benchmarks/baseline/TAG/``; commit it with the target. An op family that lists TAG in
``baselines`` then times that copy as the implementation ``triton@TAG`` beside this checkout's ``triton``, on the
same inputs in the same run; the copy is imported as the package ``zoo_baseline_TAG`` (its custom ops registered
as ``zoo_baseline_TAG::*``), so both coexist. A missing baseline is noted and its targets are "not measured".

Budget on one H100/H200 (estimates, first set before any GPU run; the H200 runs of 2026-12-04 passed larger
budgets, benchmarks/notes/h200-2026-12-04.md; the machine's start-up comes on top). Each tier has
a deadline, cumulative from the start (``--tier-budgets``, default 85 / 185 / 285 s: time a tier leaves over goes
to the next), and ``--budget`` (290 s) bounds the whole run; each family has its own budget (``budget_s`` in the
tables: a signal in the worker, a hard kill 10 s later; a killed pytest process), so one slow family cannot take
the others' time, and families past a tier's deadline are reported as skipped. The wrapper adds ``timeout`` at
budget + 30 s (the check then stops its children and still writes the file and the target lines).

- start-up, ~5 s: this process imports torch.
- tests, <= 85 s (expected 40-75 s): about 70 tests on small shapes (batch 2-32), no timing; the files run at once
  in their own pytest processes (16 cores compile in parallel; pytest-xdist splits dwconv, the mixer, fftconv,
  neighborhood and the traced ops further), 80 s each at most; each autotuned configuration is timed with
  do_bench(warmup 5 ms, rep 20 ms) instead of Triton's (25, 100). First compiles dominate (the Triton cache starts
  empty on a fresh machine), and they fill the on-disk cache for the next tiers.
- ops, <= 100 s (expected ~85 s): only the targets' cases; the reference and Triton (and dense SDPA beside the
  long 1-D attention case), no torch.compile rows (each costs tens of seconds of compiling); forward and
  forward+backward; eager do_bench(warmup 10 ms, rep 30 ms) and CUDA-graph replays of 20 ms for the device
  time, but no replays for calls over 5 ms (slow references: launch gaps do not matter there, and a graph of them
  costs ten calls); autotuning as in tier 1. dwconv (eight cases; the K=31 eager reference alone takes ~6 s) is
  the longest, ~30 s with its baseline at K=31; the others take 5-15 s, the mixer's with its grid sweep (36 rows
  under other grid targets, no compiles) about 15 s more.
- models, <= 100 s (expected 70-90 s): batch 64 at 224 px instead of 128 (sequences: 32 x 2000 tokens), eager
  steps (and CUDA-graph steps where a family's ``modes`` name ``train-graph``), do_bench(warmup 100 ms, rep
  400 ms) per row: at least 8 steps; each timm peer is measured once per layout and shared between families.
  unireplknet_t is the longest (~35 s: its first Triton step autotunes every kernel size and dilation; its
  reference backend runs hundreds of ms per step).
- readme: < 1 s. Expected total ~3.5-4.5 minutes.

Families run in their tier's table order, or in the order ``--families`` lists them (:func:`by_priority`): what a run
lists first is measured before the tier's time runs out.

``--smoke`` runs the same path on a CPU: the Triton interpreter, tiny case tuples, one timed call per row, a few
interpreter tests per op file in tier 1 (the gpu-marked ones need CUDA), tiny model widths, every budget x3; the Triton
backend of the convolution and attention models is left out there (minutes through the interpreter), KAT's runs.
``--inject-failure TIER:FAMILY[:raise|crash|hang|stall]`` makes a family fail on purpose (tests of the check itself).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fnmatch
import functools
import importlib
import importlib.abc
import importlib.util
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
RESULTS = ROOT / "benchmarks" / "results"
BASELINES = ROOT / "benchmarks" / "baseline"

TIERS = ("tests", "ops", "models")
TIER_BUDGETS_S = (85.0, 100.0, 100.0)  # cumulative deadlines from the start: 85, 185, 285 s
SMOKE_SLACK = 3.0  # --smoke: tier and family budgets x3 (a loaded 2-core CI machine; the interpreter)
BUDGET_S = 290.0
HARD_KILL_GRACE_S = 10.0  # a family's worker is killed this long after its budget's signal
AUTOTUNE_MS = (5, 20)  # do_bench(warmup, rep) per autotuned configuration (Triton's default: 25, 100)
WARM_PROCESSES = {"ops": 8, "models": 4}  # a tier's warm-up processes at most (a model's training step each)
WARM_SHARE = 0.6  # of the time left to a tier, what its warm-up may take

# Benchmark cases the targets name (scripts/benchmark.py's case names at full size)
DWCONV_SIZES = ("B64xC384x56x56", "B64xC768x14x14")
MIXER_STAGES = ("B128xC96x56x56", "B128xC192x28x28", "B128xC384x14x14", "B128xC768x7x7")
FFTCONV_CASES = tuple(f"B32xH768xL{L}" for L in (1024, 2048, 4096, 8192, 16384))
NA2D_CASES = ("B64x56x56xH2xD32xK7", "B64x56x56xH4xD32xK7")
NA_LONG_CASE = "B1xL32768xH8xD64xK2049"

# ------------------------------------------------------------------------------------------------ the tiers


@dataclass(frozen=True)
class PytestFamily:
    """Tier 1: the gpu-marked tests of one test file (each op's, and the CUDA-graph training step's)."""

    name: str
    path: str  # the test file, relative to the repository
    smoke: str  # --smoke: a pytest -k expression of a few fast interpreter tests (the gpu tests need CUDA)
    workers: int = 1  # pytest-xdist processes on a GPU (Triton compiles in parallel)
    budget_s: float = 80.0


TEST_FAMILIES = (
    PytestFamily("ssm", "tests/kernels/test_ssm.py", "test_non_contiguous_inputs"),
    PytestFamily(
        "fftconv", "tests/kernels/test_fftconv.py", "test_fftconv_equals_direct_convolution and k5 and triton", 2
    ),
    PytestFamily(
        "neighborhood", "tests/kernels/test_neighborhood.py", "test_backward_takes_an_output_gradient_of_another", 4
    ),
    PytestFamily("rational", "tests/kernels/test_rational.py", "test_triton_matches_reference_in_same_dtype and 32"),
    PytestFamily("norm_rational", "tests/kernels/test_norm_rational.py", "test_non_contiguous_inputs and permuted"),
    PytestFamily("gelu_grn", "tests/kernels/test_gelu_grn.py", "test_non_contiguous_inputs and permuted", 1, 40.0),
    PytestFamily("batch_norm_add", "tests/kernels/test_batch_norm_add.py", "layouts", 1, 40.0),
    PytestFamily("batch_norm_se", "tests/kernels/test_batch_norm_se.py", "layouts", 1, 40.0),
    PytestFamily("dwconv", "tests/kernels/test_dwconv.py", "test_dwconv2d_equals_nn_conv2d_without_bias and triton", 2),
    PytestFamily("mixer", "tests/kernels/test_inception_mixer.py", "test_grid_targets", 4, 60.0),
    PytestFamily("training", "tests/training/test_train_step.py", "bad_modes or restored"),  # the CUDA-graph step
    # every op under torch.compile on CUDA: its kernels traced into the graph, compiled and launched by Inductor
    PytestFamily("traced", "tests/kernels/test_traced_ops.py", "symbolic", 2, 100.0),
)


@dataclass(frozen=True)
class OpFamily:
    """Tier 2: rows of one ``benchmark.OPS`` function."""

    name: str  # the benchmark.OPS key
    # the cases to run on a GPU: fnmatch patterns over benchmark.case_names(name, ...), run in the patterns' order
    # (what matters most first: a family stopped by its budget keeps the rows of the cases it finished)
    cases: tuple[str, ...]
    smoke: tuple[tuple, ...]  # --smoke: tiny case tuples, in the format of benchmark.<op>_cases
    impls: tuple[str, ...] = ("reference", "triton")
    baselines: tuple[str, ...] = ()  # frozen kernel packages timed beside this checkout's, as "triton@<tag>"
    baseline_cases: tuple[str, ...] = ("*",)  # the cases (patterns) where the baselines run too
    budget_s: float = 30.0


OP_FAMILIES = (
    OpFamily("ssm", ("H1024xN64xL16384",), (("H2xN4xL9", 2, 4, 9),), budget_s=25),
    OpFamily("fftconv", FFTCONV_CASES, (("B1xH2xL16", 1, 2, 16, 16, False),), budget_s=30),
    OpFamily(
        "neighborhood",
        (*NA2D_CASES, NA_LONG_CASE),
        (("B1xL8xH1xD16xK3", 1, (8,), 1, 16, 3),),
        impls=("reference", "triton", "sdpa-dense"),
        budget_s=40,
    ),
    OpFamily("rational", ("B128xL197x768", "B128xL197x3072"), (("B1xL5x16", (1, 5, 16), 8),), budget_s=20),
    OpFamily(
        "norm_rational",
        ("*",),
        (("B1xL5x16", (1, 5, 16), 8),),
        impls=("reference", "triton", "triton-unfused"),
        budget_s=20,
    ),
    OpFamily(
        "gelu_grn",
        ("*",),
        (("B1x2x3x16", (1, 2, 3, 16)),),
        impls=("reference", "triton", "modules"),
        budget_s=15,
    ),
    OpFamily(
        "batch_norm_add",
        ("*",),
        (("B2x40x5x7", (2, 40, 5, 7)),),
        impls=("reference", "triton", "modules"),
        budget_s=15,
    ),
    OpFamily(
        "batch_norm_se",
        ("*",),
        (("B2x40x5x7", (2, 40, 5, 7)),),
        impls=("reference", "triton", "modules"),
        budget_s=15,
    ),
    OpFamily("mlp", ("*",), (("B1xL5x16", (1, 5, 16), 8),), impls=("triton", "vit"), budget_s=20),
    OpFamily(
        "host_probe", ("*",), (("empty",),), impls=("triton-launch", "fast-launch", "triton", "torch"), budget_s=10
    ),
    OpFamily(
        "dwconv",
        (
            "*xK13",
            "*xK31",
            "*xK3",
            "*",
        ),  # the large kernels' targets first (the 7 x 7 weight gradient compiles longest)
        (("B1xC4x5x5xK3", (1, 4, 5, 5), 3),),
        baselines=("issue19",),
        baseline_cases=("*xK31", "B1xC4x5x5xK3"),
        budget_s=50,
    ),
    OpFamily(
        "inception",
        ("*",),
        (("B1xC8x4x4", (1, 8, 4, 4)),),
        impls=("reference", "triton", "grid-sweep"),  # grid-sweep: benchmark.MIXER_GRID_SWEEP's rows, no compiles
        baselines=("issue19",),
        budget_s=40,
    ),
)


def ordered_cases(
    names: Sequence[str], patterns: Sequence[str], matches: Callable[[str, str], bool] = fnmatch.fnmatchcase
) -> list[str]:
    """The names matching any pattern (``matches(name, pattern)``, shell-style by default), in the order of the
    first pattern each matches (then the names' order): an op family's cases, the check's families."""
    picked: list[str] = []
    for pattern in patterns:
        picked += [n for n in names if matches(n, pattern) and n not in picked]
    return picked


@dataclass(frozen=True)
class ModelEntry:
    """One model of a tier-3 family: its rows are labelled ``backend``."""

    model: str
    backend: str  # "triton", "torch", "triton-deployed" (re-parameterised) or "timm" (a peer)
    kwargs: dict = field(default_factory=dict)
    smoke: bool = True  # run in --smoke (Triton backends of conv/attention models take minutes on the interpreter)
    env: dict = field(default_factory=dict)  # environment variables set while the model is built and timed


@dataclass(frozen=True)
class ModelFamily:
    """Tier 3: one zoo model family beside its timm peers (rows of ``modes``, group = name)."""

    name: str
    entries: tuple[ModelEntry, ...]
    sequence: bool = False  # token sequences (ListOps-like: vocabulary 18, 10 classes) instead of images
    channels_last: bool = False
    size_kwarg: bool = False  # the constructor takes img_size (KAT and its ViT peer)
    budget_s: float = 30.0
    modes: tuple[str, ...] = ("train", "infer")  # benchmark.bench_model's modes (it skips "train-graph" off CUDA)


def _zoo(model: str, backend: str, smoke: bool = True, env: dict | None = None, **kwargs) -> ModelEntry:
    """A zoo model entry: ``backend`` is the row label, its first word the constructor's backend argument
    ("triton-deployed": backend "triton"; benchmark.bench_model times a "-deployed" row in inference only)."""
    return ModelEntry(model, backend, {"backend": backend.split("-")[0], **kwargs}, smoke, env or {})


# UniRepLKNet's fused ops (GELU + GRN, BN + SE, the block tail and the branches' BN + add) switched off: the blocks
# run their modules on the Triton backend (zoo/layers/unireplknet.py), the depthwise kernels unchanged
UNIREPLKNET_MODULES_ENV = {"ZOO_GELU_GRN": "0", "ZOO_BATCH_NORM_ADD": "0", "ZOO_BATCH_NORM_SE": "0"}


MODEL_FAMILIES = (
    ModelFamily(
        "unireplknet",
        (
            _zoo("unireplknet_t", "triton", smoke=False),
            # the Dilated Reparam Blocks' training form as one merged convolution (zoo/layers/dilated_reparam.py)
            _zoo("unireplknet_t", "triton-merged", smoke=False, merge_branches="always"),
            ModelEntry("convnext_tiny", "timm"),
            _zoo("unireplknet_t", "torch"),
            _zoo("unireplknet_t", "triton-deployed", smoke=False, deploy=True),
            # last (the first cut when time runs out): what the fused ops gain over the modules, model-wide
            _zoo("unireplknet_t", "triton-modules", smoke=False, env=UNIREPLKNET_MODULES_ENV),
        ),
        channels_last=True,
        budget_s=75,
        modes=("train", "train-graph", "infer"),
    ),
    ModelFamily(
        "nat",
        (_zoo("nat_m", "triton", smoke=False), _zoo("nat_m", "torch"), ModelEntry("convnext_tiny", "timm")),
        budget_s=30,
    ),
    ModelFamily("s4d", (_zoo("s4d_t", "triton", smoke=False), _zoo("s4d_t", "torch")), sequence=True, budget_s=20),
    ModelFamily(
        "kat",
        (_zoo("kat_t", "triton"), ModelEntry("vit_tiny_patch16_224", "timm")),
        size_kwarg=True,
        budget_s=25,
        modes=("train", "train-graph", "infer"),
    ),
    ModelFamily(
        "inceptionnext",
        (
            _zoo("inceptionnext_t", "triton", smoke=False),
            ModelEntry("convnext_tiny", "timm"),
            ModelEntry("inception_next_tiny", "timm"),
            # last (the first cut when time runs out): the deployed form (BN and layer scales folded), inference only
            _zoo("inceptionnext_t", "triton-deployed", smoke=False, deploy=True),
        ),
        channels_last=True,
        budget_s=25,
    ),
    # last: torch.compile's first compile of each model takes tens of seconds
    ModelFamily(
        "kat-compile",
        (_zoo("kat_t", "triton"), ModelEntry("vit_tiny_patch16_224", "timm")),
        size_kwarg=True,
        budget_s=60,
        modes=("train-compile",),
    ),
)

SEQUENCE = dict(vocab_size=18, num_classes=10)  # ListOps' tokens (benchmark.SEQUENCE_GROUPS["listops"])
_TINY_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
SMOKE_MODEL_KWARGS = {  # --smoke: tiny widths and depths (tests/models/test_contract.py's families, smaller)
    "kat_t": dict(patch_size=8, embed_dim=32, depth=1, num_heads=2),
    "vit_tiny_patch16_224": dict(patch_size=8, embed_dim=32, depth=1, num_heads=2),
    "inceptionnext_t": _TINY_CONVNEXT,
    "convnext_tiny": _TINY_CONVNEXT,
    "inception_next_tiny": _TINY_CONVNEXT,
    "unireplknet_t": dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_sizes=((3,), (7,), (5,), (3,))),
    "nat_m": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 4)),
    "s4d_t": dict(d_model=16, n_layers=1, d_state=8),
}

FAMILIES = {"tests": TEST_FAMILIES, "ops": OP_FAMILIES, "models": MODEL_FAMILIES}


@dataclass(frozen=True)
class Sizes:
    """Model sizes and timing of one mode (GPU or --smoke)."""

    batch: int
    img_size: int
    seq_batch: int
    seq_len: int
    timing: dict  # benchmark.Timing fields


GPU_SIZES = Sizes(
    64,
    224,
    32,
    2000,
    dict(warmup_ms=10, rep_ms=30, graph_rep_ms=20, graph_max_ms=5.0, model_warmup_ms=100, model_rep_ms=400),
)
SMOKE_SIZES = Sizes(2, 32, 2, 16, dict(cpu_warmup=False, cpu_samples=1))


# ------------------------------------------------------------------------------------------------ targets


class NotMeasured(LookupError):
    """A target's rows are missing (the message says which)."""


def _device_ms(row: dict) -> float:
    """The device time of a row: CUDA-graph replays where there are any, else the eager median."""
    return row["graph_ms"] or row["ms"]


def op_speedup(
    op: str, cases: tuple[str, ...], passes: tuple[str, ...], base: str, new: str = "triton", dtype: str = "bfloat16"
) -> Callable[[dict], tuple[float, str]]:
    """Ratio: ``base``'s device time over ``new``'s for ``op``, the worst over every case matching ``cases`` (fnmatch
    patterns, each must match a measured case) and every pass in ``passes``."""

    def ratio(results: dict) -> tuple[float, str]:
        rows = {(r["case"], r["impl"], r["pass_"]): r for r in results["ops"] if r["op"] == op and r["dtype"] == dtype}
        values = {}
        for pass_ in passes:
            for pattern in cases:
                hits = [
                    c
                    for (c, impl, p) in rows
                    if impl == new and p == pass_ and fnmatch.fnmatchcase(c, pattern) and (c, base, p) in rows
                ]
                if not hits:
                    raise NotMeasured(f"no {op} {pass_} rows of {new} and {base} for {pattern}")
                for c in hits:
                    values[f"{c} {pass_}"] = _device_ms(rows[(c, base, pass_)]) / _device_ms(rows[(c, new, pass_)])
        worst = min(values, key=values.get)
        return values[worst], f"worst of {len(values)}: {worst}" if len(values) > 1 else worst

    return ratio


def op_best_of(
    op: str, cases: tuple[str, ...], pass_: str, base: str, prefix: str, dtype: str = "bfloat16"
) -> Callable[[dict], tuple[float, str]]:
    """Ratio: ``base``'s device time over the fastest of "triton" and every implementation named ``prefix``...
    (a launch setting swept) for ``op`` and ``pass_``, the worst over the cases matching ``cases``; the detail
    names each case's fastest. A case without the base's, triton's or any swept row is not measured."""

    def ratio(results: dict) -> tuple[float, str]:
        rows = [r for r in results["ops"] if r["op"] == op and r["dtype"] == dtype and r["pass_"] == pass_]
        values, winners = {}, []
        for pattern in cases:
            hits = sorted({r["case"] for r in rows if fnmatch.fnmatchcase(r["case"], pattern)})
            for case in hits:
                mine = {r["impl"]: r for r in rows if r["case"] == case}
                tried = {i: r for i, r in mine.items() if i == "triton" or i.startswith(prefix)}
                if base not in mine or "triton" not in tried or len(tried) == 1:
                    raise NotMeasured(f"no {op} {pass_} rows of {base}, triton and {prefix}* for {case}")
                best = min(tried, key=lambda i: _device_ms(tried[i]))
                values[case] = _device_ms(mine[base]) / _device_ms(tried[best])
                winners.append(f"{case} {best}")
            if not hits:
                raise NotMeasured(f"no {op} {pass_} rows for {pattern}")
        worst = min(values, key=values.get)
        return values[worst], f"worst: {worst}; fastest: {', '.join(winners)}"

    return ratio


def host_budget(op: str, case: str, pass_: str, budget_us: float, dtype: str = "bfloat16"):
    """Ratio: ``budget_us`` over the host microseconds per eager call of the Triton row (``host_us``), so that a
    ratio >= 1 means within the budget."""

    def ratio(results: dict) -> tuple[float, str]:
        for r in results["ops"]:
            if (r["op"], r["case"], r["pass_"], r["impl"], r["dtype"]) == (op, case, pass_, "triton", dtype):
                if r.get("host_us") is None:
                    break
                return budget_us / r["host_us"], f"{case} {pass_}: {r['host_us']:.0f} us per call"
        raise NotMeasured(f"no host time of the triton {op} {pass_} row for {case}")

    return ratio


def model_speedup(
    group: str, model: str, backend: str, peer: str, peer_backend: str = "timm", modes: tuple[str, ...] = ("train",)
) -> Callable[[dict], tuple[float, str]]:
    """Ratio: images/s of ``model`` (``backend``) over ``peer``'s in the rows of ``group``, the worst of ``modes``."""

    def ratio(results: dict) -> tuple[float, str]:
        rows = {(r["model"], r["backend"], r["mode"]): r for r in results["models"] if r.get("group") == group}
        values = {}
        for mode in modes:
            ours, theirs = rows.get((model, backend, mode)), rows.get((peer, peer_backend, mode))
            if ours is None or theirs is None:
                missing = f"{model} ({backend})" if ours is None else f"{peer} ({peer_backend})"
                raise NotMeasured(f"no {mode} row of {missing} in {group}")
            values[mode] = ours["images_per_s"] / theirs["images_per_s"]
        worst = min(values, key=values.get)
        return values[worst], f"worst of {'/'.join(values)}: {worst}" if len(values) > 1 else worst

    return ratio


def na_long_flop_fraction(results: dict) -> tuple[float, str]:
    """Ratio: the long 1-D neighborhood forward's useful FLOP rate over dense SDPA's, (window / L) x (dense time /
    NA time), from the rows of the case ``B..xL<L>x..xK<window>``."""
    rows = {
        r["impl"]: r
        for r in results["ops"]
        if r["op"] == "neighborhood_attention"
        and r["pass_"] == "fwd"
        and re.fullmatch(r"B1xL\d+xH\d+xD\d+xK\d+", r["case"])
    }
    if "triton" not in rows or "sdpa-dense" not in rows:
        raise NotMeasured("no forward rows of triton and sdpa-dense for the long 1-D case")
    case = rows["triton"]["case"]
    length, window = (int(v) for v in re.fullmatch(r"B1xL(\d+)xH\d+xD\d+xK(\d+)", case).groups())
    return window / length * _device_ms(rows["sdpa-dense"]) / _device_ms(rows["triton"]), case


@dataclass(frozen=True)
class Target:
    """One performance target of the issues: ``ratio(results) >= threshold`` (None: reported, no threshold)."""

    name: str
    issue: int
    family: str  # "tier:family" whose rows it reads (named when they are missing)
    measures: str
    ratio: Callable[[dict], tuple[float, str]]
    threshold: float | None


TARGETS = (
    Target(
        "s4d_kernel_vs_reference",
        8,
        "ops:ssm",
        "s4d_kernel H1024 N64 L16384 fp32, eager reference / Triton, worst of fwd and fwd+bwd",
        op_speedup("s4d_kernel", ("H1024xN64xL16384",), ("fwd", "fwd+bwd"), "reference", dtype="float32"),
        5.0,
    ),
    Target(
        "fftconv_fwd_bwd_vs_torch_fft",
        8,
        "ops:fftconv",
        "fftconv fwd+bwd bf16 B32 H768 L1K-16K (D, GELU), torch.fft reference / Triton, worst L",
        op_speedup("fftconv", FFTCONV_CASES, ("fwd+bwd",), "reference"),
        1.5,
    ),
    Target(
        "na2d_fwd_bwd_vs_reference",
        20,
        "ops:neighborhood",
        "neighborhood attention 2-D k7 56x56 B64, 2 and 4 heads of 32, bf16 fwd+bwd with bias, reference / Triton",
        op_speedup("neighborhood_attention", NA2D_CASES, ("fwd+bwd",), "reference"),
        5.0,
    ),
    Target(
        "na1d_long_vs_dense_sdpa_flops",
        20,
        "ops:neighborhood",
        "1-D L32768 window 2049 forward: useful FLOP rate over dense SDPA's",
        na_long_flop_fraction,
        0.5,
    ),
    Target(
        "rational_fwd_bwd_vs_reference",
        3,
        "ops:rational",
        "group_rational fwd+bwd bf16 B128 L197 D768/D3072, eager reference / Triton, worst width",
        op_speedup("group_rational", ("*",), ("fwd+bwd",), "reference"),
        None,
    ),
    Target(
        "gelu_grn_fwd_bwd_vs_modules",
        19,
        "ops:gelu_grn",
        "UniRepLKNet's GELU + GRN fwd+bwd bf16 B128 at UniRepLKNet-T's four stages, nn.GELU + GRN / Triton, worst",
        op_speedup("gelu_grn", ("*",), ("fwd+bwd",), "modules"),
        None,
    ),
    Target(
        "batch_norm_add_fwd_bwd_vs_modules",
        19,
        "ops:batch_norm_add",
        "UniRepLKNet's block tail (BN, layer scale, residual add) fwd+bwd B128 at UniRepLKNet-T's four stages, "
        "bf16 input under autocast, modules / Triton, worst",
        op_speedup("batch_norm_add", ("*",), ("fwd+bwd",), "modules"),
        None,
    ),
    Target(
        "batch_norm_se_fwd_bwd_vs_modules",
        19,
        "ops:batch_norm_se",
        "UniRepLKNet's BN + SE block fwd+bwd bf16 B128 at UniRepLKNet-T's four stages, modules / Triton, worst",
        op_speedup("batch_norm_se", ("*",), ("fwd+bwd",), "modules"),
        None,
    ),
    Target(
        "rational_host_time",
        21,
        "ops:rational",
        "group_rational eager fwd+bwd, 100 us / the host's time per call (B128 L197 D768, bf16)",
        host_budget("group_rational", "B128xL197x768", "fwd+bwd", 100.0),
        1.0,
    ),
    Target(
        "dwconv_k3_k7_fwd_bwd_vs_pytorch",
        19,
        "ops:dwconv",
        "dwconv2d fwd+bwd bf16 channels_last B64 C384 56x56 / C768 14x14, K3 and K7, PyTorch / Triton",
        op_speedup("dwconv2d", tuple(f"{s}xK{k}" for s in DWCONV_SIZES for k in (3, 7)), ("fwd+bwd",), "reference"),
        1.5,
    ),
    Target(
        "dwconv_k13_k31_fwd_bwd_vs_pytorch",
        19,
        "ops:dwconv",
        "dwconv2d fwd+bwd, as above, K13 and K31, PyTorch / Triton",
        op_speedup("dwconv2d", tuple(f"{s}xK{k}" for s in DWCONV_SIZES for k in (13, 31)), ("fwd+bwd",), "reference"),
        10.0,
    ),
    Target(
        "dwconv_k31_fwd_vs_today",
        19,
        "ops:dwconv",
        "dwconv2d K31 forward, both sizes: today's Triton (baseline issue19) / this checkout's",
        op_speedup("dwconv2d", tuple(f"{s}xK31" for s in DWCONV_SIZES), ("fwd",), "triton@issue19"),
        3.0,
    ),
    Target(
        "mixer_fwd_bwd_vs_eager",
        6,
        "ops:inception",
        "InceptionNeXt-T mixer fwd+bwd B128, stages 1-4: eager split/conv/cat / fused Triton",
        op_speedup("inception_dwconv2d", MIXER_STAGES, ("fwd+bwd",), "reference"),
        1.5,
    ),
    Target(
        "mixer_fwd_bwd_vs_today",
        19,
        "ops:inception",
        "InceptionNeXt-T mixer fwd+bwd, every stage: today's Triton (baseline issue19) / this checkout's",
        op_speedup("inception_dwconv2d", MIXER_STAGES, ("fwd+bwd",), "triton@issue19"),
        2.0,
    ),
    Target(
        "mixer_fwd_bwd_best_grid_vs_today",
        19,
        "ops:inception",
        "as above, this checkout's mixer under the fastest of its grid targets per stage (benchmark.MIXER_GRID_SWEEP)",
        op_best_of("inception_dwconv2d", MIXER_STAGES, "fwd+bwd", "triton@issue19", "grid-"),
        None,
    ),
    Target(
        "unireplknet_t_train_triton_vs_torch",
        7,
        "models:unireplknet",
        "unireplknet_t training images/s, Triton backend / PyTorch backend",
        model_speedup("unireplknet", "unireplknet_t", "triton", "unireplknet_t", "torch"),
        1.5,
    ),
    Target(
        "unireplknet_t_train_vs_convnext_tiny",
        19,
        "models:unireplknet",
        "unireplknet_t (Triton) training images/s / convnext_tiny's",
        model_speedup("unireplknet", "unireplknet_t", "triton", "convnext_tiny"),
        1.0,
    ),
    Target(
        "unireplknet_t_train_merged_vs_branches",
        19,
        "models:unireplknet",
        "unireplknet_t training images/s, Dilated Reparam Blocks merged / branch by branch (Triton; eager)",
        model_speedup("unireplknet", "unireplknet_t", "triton-merged", "unireplknet_t", "triton"),
        None,
    ),
    Target(
        "unireplknet_t_train_graph_merged_vs_branches",
        19,
        "models:unireplknet",
        "as above, the training step captured in a CUDA graph (no host time)",
        model_speedup(
            "unireplknet", "unireplknet_t", "triton-merged", "unireplknet_t", "triton", modes=("train-graph",)
        ),
        None,
    ),
    Target(
        "unireplknet_t_train_fused_ops_vs_modules",
        19,
        "models:unireplknet",
        "unireplknet_t training images/s (Triton), the fused GELU + GRN, BN + SE and BN + add ops / their modules",
        model_speedup("unireplknet", "unireplknet_t", "triton", "unireplknet_t", "triton-modules"),
        None,
    ),
    Target(
        "unireplknet_t_deployed_infer_vs_convnext_tiny",
        7,
        "models:unireplknet",
        "unireplknet_t deployed (re-parameterised, Triton) inference images/s / convnext_tiny's",
        model_speedup("unireplknet", "unireplknet_t", "triton-deployed", "convnext_tiny", modes=("infer",)),
        None,
    ),
    Target(
        "nat_m_train_triton_vs_torch",
        20,
        "models:nat",
        "nat_m training images/s, Triton backend / the gather reference",
        model_speedup("nat", "nat_m", "triton", "nat_m", "torch"),
        3.0,
    ),
    Target(
        "nat_m_train_vs_convnext_tiny",
        11,
        "models:nat",
        "nat_m (Triton) training images/s / convnext_tiny's",
        model_speedup("nat", "nat_m", "triton", "convnext_tiny"),
        None,
    ),
    Target(
        "s4d_t_train_triton_vs_torch",
        9,
        "models:s4d",
        "s4d_t training sequences/s (32 x 2000 tokens), Triton backend / PyTorch backend",
        model_speedup("s4d", "s4d_t", "triton", "s4d_t", "torch"),
        None,
    ),
    Target(
        "kat_t_train_vs_vit_tiny",
        21,
        "models:kat",
        "kat_t (Triton) training images/s / vit_tiny_patch16_224's, eager",
        model_speedup("kat", "kat_t", "triton", "vit_tiny_patch16_224"),
        1.0,
    ),
    Target(
        "kat_t_train_graph_vs_vit_tiny",
        21,
        "models:kat",
        "kat_t (Triton) training images/s / vit_tiny_patch16_224's, both steps captured in CUDA graphs",
        model_speedup("kat", "kat_t", "triton", "vit_tiny_patch16_224", modes=("train-graph",)),
        1.0,
    ),
    Target(
        "kat_t_train_compile_vs_vit_tiny",
        21,
        "models:kat-compile",
        "kat_t (Triton) training images/s / vit_tiny_patch16_224's, both compiled (torch.compile, fullgraph)",
        model_speedup("kat-compile", "kat_t", "triton", "vit_tiny_patch16_224", modes=("train-compile",)),
        1.0,
    ),
    Target(
        "inceptionnext_t_vs_convnext_tiny",
        19,
        "models:inceptionnext",
        "inceptionnext_t (Triton) images/s / convnext_tiny's, worst of train and infer",
        model_speedup("inceptionnext", "inceptionnext_t", "triton", "convnext_tiny", modes=("train", "infer")),
        1.1,
    ),
    Target(
        "inceptionnext_t_vs_inception_next_tiny",
        19,
        "models:inceptionnext",
        "inceptionnext_t (Triton) images/s / timm's inception_next_tiny's, worst of train and infer",
        model_speedup("inceptionnext", "inceptionnext_t", "triton", "inception_next_tiny", modes=("train", "infer")),
        1.2,
    ),
    Target(
        "inceptionnext_t_deployed_infer_vs_convnext_tiny",
        19,
        "models:inceptionnext",
        "inceptionnext_t deployed (BN and layer scales folded, Triton) inference images/s / convnext_tiny's",
        model_speedup("inceptionnext", "inceptionnext_t", "triton-deployed", "convnext_tiny", modes=("infer",)),
        None,
    ),
)


def evaluate_targets(results: dict, targets: tuple[Target, ...] = TARGETS) -> list[dict]:
    """Each target's measured ratio and status from ``results``: "met", "not met", "reported" (no threshold), "not
    measured" (with the reason), or "smoke" (a --smoke run: interpreter timings at tiny sizes judge nothing)."""
    families = {f"{f['tier']}:{f['family']}": f for f in results.get("check", {}).get("families", [])}
    smoke = results.get("check", {}).get("mode") == "smoke"
    out = []
    for target in targets:
        entry = dict(name=target.name, issue=target.issue, measures=target.measures, threshold=target.threshold)
        try:
            value, detail = target.ratio(results)
        except NotMeasured as missing:
            family = families.get(target.family)
            state = family["status"] if family else "not run"
            reason = f"{target.family} {state}" if state != "ok" else str(missing)
            entry.update(ratio=None, status="not measured", detail=reason)
        else:
            status = "reported" if target.threshold is None else ("met" if value >= target.threshold else "not met")
            entry.update(ratio=value, status="smoke" if smoke else status, detail=detail)
        out.append(entry)
    return out


def target_line(entry: dict) -> str:
    """One output line per target: ``target NAME (#issue): RATIO, target >= T: STATUS [detail]``."""
    goal = "reported, no threshold" if entry["threshold"] is None else f"target >= {entry['threshold']:g}x"
    if entry["ratio"] is None:
        return f"target {entry['name']} (#{entry['issue']}): not measured ({entry['detail']}); {goal}"
    status = {"reported": "", "smoke": " (smoke run: not a measurement)"}.get(entry["status"])
    status = f": {entry['status'].upper()}" if status is None else status
    return f"target {entry['name']} (#{entry['issue']}): {entry['ratio']:.2f}x, {goal}{status} [{entry['detail']}]"


# ------------------------------------------------------------------------------------------------ baselines


def _baseline_package(tag: str) -> str:
    """The package name a baseline is imported as (``zoo_baseline_<tag>``)."""
    if not re.fullmatch(r"[a-z0-9_]+", tag):
        raise ValueError(f"a baseline tag is lower-case letters, digits and '_', got {tag!r}")
    return f"zoo_baseline_{tag}"


def freeze_baseline(tag: str, rev: str | None = None, root: Path = BASELINES) -> Path:
    """Copy ``zoo/kernels/**/*.py`` (the working tree's, or git revision ``rev``'s) to ``root/tag/`` unchanged; the
    copy is renamed only when it is imported (:func:`load_baseline`), so the files stay diffable and lint-clean."""
    package = _baseline_package(tag)
    folder = root / tag
    if folder.exists():
        raise FileExistsError(f"{folder} exists: a baseline is frozen once (remove it to freeze again)")
    kernels = ROOT / "zoo" / "kernels"
    if rev is None:
        files = {p.relative_to(kernels).as_posix(): p.read_text() for p in sorted(kernels.rglob("*.py"))}
    else:

        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout

        names = [n for n in git("ls-tree", "-r", "--name-only", rev, "zoo/kernels/").split() if n.endswith(".py")]
        files = {n[len("zoo/kernels/") :]: git("show", f"{rev}:{n}") for n in names}
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    frozen = dict(tag=tag, package=package, rev=rev or "working tree", date=_dt.date.today().isoformat())
    (folder / "frozen.json").write_text(json.dumps(dict(frozen, files=sorted(files)), indent=1) + "\n")
    return folder


def _rewrite(source: str, package: str) -> str:
    """A kernel module's source as a module of ``package``: imports and registered op names renamed."""
    source = source.replace("zoo.kernels", package).replace('"zoo::', f'"{package}::')
    return source.replace("torch.ops.zoo.", f"torch.ops.{package}.")


class _BaselineLoader(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``zoo_baseline_<tag>[.module]`` from a frozen copy of zoo/kernels, renamed as it loads."""

    def __init__(self, package: str, folder: Path):
        self.package, self.folder = package, folder

    def _file(self, fullname: str) -> Path | None:
        """The frozen file of module ``fullname``: ``a/b.py``, or ``a/b/__init__.py`` for a package."""
        if fullname != self.package and not fullname.startswith(self.package + "."):
            return None
        folder = self.folder.joinpath(*fullname.split(".")[1:])
        if (folder / "__init__.py").exists():
            return folder / "__init__.py"
        module = folder.with_suffix(".py")
        return module if module.exists() else None

    def find_spec(self, fullname, path=None, target=None):
        file = self._file(fullname)
        if file is None:
            return None
        spec = importlib.util.spec_from_loader(fullname, self, origin=str(file), is_package=file.name == "__init__.py")
        if file.name == "__init__.py":
            spec.submodule_search_locations = [str(file.parent)]
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        file = self._file(module.__name__)
        module.__file__ = str(file)
        exec(compile(_rewrite(file.read_text(), self.package), str(file), "exec"), module.__dict__)


def load_baseline(tag: str, root: Path = BASELINES) -> str | None:
    """Import the frozen baseline ``tag`` (its package name, for ``kernels=``), or None where it is not frozen."""
    package = _baseline_package(tag)
    folder = root / tag
    if not (folder / "__init__.py").exists():
        return None
    if not any(isinstance(f, _BaselineLoader) and f.package == package for f in sys.meta_path):
        sys.meta_path.insert(0, _BaselineLoader(package, folder))
    importlib.import_module(package)
    return package


# ------------------------------------------------------------------------------------------------ helpers


def quick_autotune(warmup_ms: int = AUTOTUNE_MS[0], rep_ms: int = AUTOTUNE_MS[1]) -> bool:
    """Make ``triton.autotune`` time each configuration with do_bench(warmup_ms, rep_ms) (Triton's default is
    25 / 100 ms): the choice is a quick pick, enough for correctness tests and close for timings. GPU only."""
    import torch

    if not torch.cuda.is_available():
        return False
    import triton.testing
    from triton.runtime import driver

    bench = functools.partial(triton.testing.do_bench, warmup=warmup_ms, rep=rep_ms)
    try:
        driver.active.get_benchmarker = lambda: bench
    except Exception:  # another Triton: leave its autotuner as it is
        return False
    return True


def pytest_configure(config) -> None:
    """pytest plugin hook (tier 1 loads this file with ``-p gpu_check``): short autotuning in the test processes."""
    if os.environ.get("GPU_CHECK_QUICK_AUTOTUNE") == "1":
        quick_autotune()


def _benchmark():
    """scripts/benchmark.py as a module (it imports torch, triton and zoo.kernels)."""
    if "benchmark" in sys.modules:
        return sys.modules["benchmark"]
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module("benchmark")


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (zoo._io: a reader never sees half a file)."""
    from zoo._io import atomic_write  # the standard library only

    atomic_write(path, text)


class StepTimeout(BaseException):
    """A family's budget ran out (raised by the worker's alarm; a BaseException so no ``except Exception`` eats it)."""


class _Alarm:
    """Raise :class:`StepTimeout` in this thread after ``seconds`` (SIGALRM; no-op where there is none)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def _fire(self, signum, frame):
        raise StepTimeout()

    def __enter__(self):
        if hasattr(signal, "setitimer"):
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 0.01))
        return self

    def __exit__(self, *exc):
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


def _parse_injections(values: list[str]) -> dict[str, str]:
    """``TIER:FAMILY[:MODE]`` -> {"TIER:FAMILY": MODE}; MODE is raise (default), crash, hang or stall."""
    out = {}
    for value in values:
        parts = value.split(":")
        if len(parts) not in (2, 3) or parts[0] not in TIERS or (len(parts) == 3 and parts[2] not in _MODES):
            raise SystemExit(f"--inject-failure takes TIER:FAMILY[:{'|'.join(_MODES)}] with TIER in {TIERS}: {value!r}")
        out[f"{parts[0]}:{parts[1]}"] = parts[2] if len(parts) == 3 else "raise"
    return out


_MODES = ("raise", "crash", "hang", "stall")  # stall: deaf to the family's alarm (the parent's hard kill)


def _inject(mode: str) -> None:
    """Fail on purpose, as asked by --inject-failure."""
    if mode == "crash":
        print("gpu_check: injected crash (--inject-failure)", file=sys.stderr, flush=True)
        os._exit(70)
    if mode == "stall" and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    if mode in ("hang", "stall"):
        time.sleep(10**6)
    raise RuntimeError("injected failure (--inject-failure)")


def _parse_budgets(values: list[str]) -> dict[str, float]:
    """``TIER:FAMILY=SECONDS`` -> {"TIER:FAMILY": seconds}."""
    out = {}
    for value in values:
        key, _, seconds = value.partition("=")
        if key.count(":") != 1 or not seconds:
            raise SystemExit(f"--family-budget takes TIER:FAMILY=SECONDS, got {value!r}")
        out[key] = float(seconds)
    return out


def _selects(pattern: str, tier: str, name: str) -> bool:
    """Whether a ``--families`` pattern (``TIER:FAMILY``, shell-style, or a bare family name) selects a family."""
    return fnmatch.fnmatchcase(f"{tier}:{name}", pattern) or pattern == name


def by_priority(tier: str, names: list[str], patterns: list[str]) -> list[str]:
    """``names`` (the families of ``tier`` that ``patterns`` select, in the tier's order) in the order of the first
    ``--families`` pattern that selects each: what a command lists first runs first, before the tier's time runs
    out. Among the families one pattern selects, and without patterns, the tier's order stays."""
    if not patterns:
        return list(names)
    return ordered_cases(names, patterns, lambda name, pattern: _selects(pattern, tier, name))


# ------------------------------------------------------------------------------------------------ worker


def _families_in_order(tier: str, only: str) -> list:
    """The families of ``tier`` named in ``only`` (``--only``: comma-separated), in that order (the check's
    priority, :func:`by_priority`)."""
    by_name = {f.name: f for f in FAMILIES[tier]}
    return [by_name[name] for name in only.split(",") if name in by_name]


def worker_main(args: argparse.Namespace) -> None:
    """Run the families ``args.only`` of tier ``args.worker`` and report on file descriptor ``args.proto_fd``,
    one JSON event per line: info, start, rows, done (status ok / failed / timeout), fatal, finished."""
    proto = os.fdopen(args.proto_fd, "w", buffering=1)

    def emit(event: str, **data) -> None:
        line = json.dumps({"event": event, **data}, default=str) + "\n"
        blocked = hasattr(signal, "pthread_sigmask")
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM}) if blocked else None
        try:  # whole lines only: a family's alarm is delivered after the write
            proto.write(line)
            proto.flush()
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    import torch

    context = _worker_context(args)
    bm, device = context["bm"], context["device"]
    injections = _parse_injections(args.inject_failure)
    budgets = _parse_budgets(args.family_budget)
    if args.worker == "ops":
        copy_bw = bm.copy_bandwidth_gbps(device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        datasheet = next((v for k, v in bm.DATASHEET_BANDWIDTH_GBPS.items() if k in name), None)
        context.update(copy_bw=copy_bw, datasheet=datasheet)
        emit("info", copy_bandwidth_gbps=copy_bw, datasheet_bandwidth_gbps=datasheet)
    for family in _families_in_order(args.worker, args.only):
        key = f"{args.worker}:{family.name}"
        budget = budgets.get(key, family.budget_s * (SMOKE_SLACK if args.smoke else 1.0))
        emit("start", family=family.name, budget_s=budget)
        start, notes = time.monotonic(), []
        try:
            with _Alarm(budget):
                if key in injections:
                    _inject(injections[key])
                run = _op_family if args.worker == "ops" else _model_family
                for kind, rows in run(family, context, notes):
                    emit("rows", family=family.name, kind=kind, rows=rows)
            status, error = "ok", None
        except StepTimeout:
            status, error = "timeout", f"over its budget of {budget:g} s"
        except Exception as exc:  # report the family, go on with the next
            status, error = "failed", f"{type(exc).__name__}: {exc}"[:1000]
            traceback.print_exc()
        emit("done", family=family.name, status=status, error=error, notes=notes, seconds=time.monotonic() - start)
        if device.type == "cuda":
            healthy = _cuda_healthy(torch)
            if not healthy:  # a broken CUDA context fails every later family: the parent starts a fresh worker
                emit("fatal", reason=f"CUDA context unusable after {family.name}")
                proto.close()
                os._exit(3)
            torch.cuda.empty_cache()
    emit("finished")
    proto.close()


def _worker_context(args: argparse.Namespace, once: bool = False) -> dict:
    """What a worker's families run with: benchmark.py (its ``TIMING`` set for this mode; ``once``: every timed
    call runs once, untimed), the device, dtype and sizes; autotuning shortened on a GPU."""
    bm = _benchmark()
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    bm.TIMING = bm.Timing(**sizes.timing, once=once)
    if device.type == "cuda":
        quick_autotune()
    dtype = getattr(torch, args.dtype)
    return dict(
        bm=bm, device=device, dtype=dtype, sizes=sizes, smoke=args.smoke, shared={}, baseline_dir=args.baseline_dir
    )


def warms(family: ModelFamily, entry: ModelEntry, smoke: bool) -> bool:
    """Whether the models tier's warm-up runs ``entry``: a Triton-backed model (kernels to compile), or any model
    of a family that compiles with Inductor (its graphs); not one that --smoke leaves out."""
    return (entry.backend.startswith("triton") or "train-compile" in family.modes) and (entry.smoke or not smoke)


def claim(folder: Path, unit: int) -> bool:
    """Take unit ``unit`` of a warm-up: True for the one process whose claim file in ``folder`` is new."""
    try:
        os.close(os.open(folder / str(unit), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def warm_main(args: argparse.Namespace) -> None:
    """A warm-up process of tier ``args.warm_worker`` (see :meth:`Check.warm`): runs the Triton implementations of
    each case of the op families ``args.only`` (or the steps of the models :func:`warms` picks, each mode but the
    CUDA graph's), once each and untimed, taking the units one at a time by creating a claim file in
    ``args.claims`` (a unit another process claimed is skipped). Prints ``units N``, then one line per unit:
    ``warmed ...`` or ``warm-up of ... failed ...``."""
    import torch

    ctx = _worker_context(args, once=True)
    units: list[tuple] = []
    for family in _families_in_order(args.warm_worker, args.only):
        if args.warm_worker == "ops":
            units += [(family, case) for case in _op_cases(family, ctx)]
        else:
            units += [(family, e) for e in family.entries if warms(family, e, args.smoke)]
    print(f"units {len(units)}", flush=True)
    kernels: dict[str, dict[str, str]] = {}
    for index, (family, item) in enumerate(units):
        if not claim(args.claims, index):
            continue
        label = f"{args.warm_worker}:{family.name} " + (
            (item if isinstance(item, str) else item[0])
            if args.warm_worker == "ops"
            else f"{item.model} ({item.backend})"
        )
        start = time.monotonic()
        try:
            if args.warm_worker == "ops":
                if family.name not in kernels:
                    kernels[family.name] = _op_kernels(family, ctx, [])
                impls = {i for i in set(family.impls) | set(kernels[family.name]) if i.startswith("triton")}
                _op_case(family, item, ctx, kernels[family.name], impls)
            else:
                _model_rows(family, item, ctx, [m for m in family.modes if m != "train-graph"])
            print(f"warmed {label} in {time.monotonic() - start:.1f} s", flush=True)
        except Exception as exc:  # the timing worker meets it again and reports it
            print(
                f"warm-up of {label} failed after {time.monotonic() - start:.1f} s: {type(exc).__name__}: {exc}"[:500]
            )
            if ctx["device"].type == "cuda" and not _cuda_healthy(torch):
                print("warm-up process stopped: its CUDA context is unusable", flush=True)
                return
        if ctx["device"].type == "cuda":
            torch.cuda.empty_cache()


def _cuda_healthy(torch) -> bool:
    """Whether CUDA still works in this process (after a failure: an illegal access poisons the context)."""
    try:
        torch.cuda.synchronize()
        return float((torch.ones(16, device="cuda") + 1).sum()) == 32.0
    except Exception:
        return False


def _op_kernels(family: OpFamily, ctx: dict, notes: list[str]) -> dict[str, str]:
    """The kernel packages an op family times: this checkout's as "triton", each frozen baseline it lists as
    "triton@<tag>" (imported here; a missing one is noted)."""
    kernels = {"triton": "zoo.kernels"}
    for tag in family.baselines:
        package = load_baseline(tag, ctx["baseline_dir"])
        if package is None:
            notes.append(f"baseline {tag} not frozen (python scripts/gpu_check.py --freeze-baseline {tag})")
        else:
            kernels[f"triton@{tag}"] = package
            frozen = ctx["baseline_dir"] / tag / "frozen.json"
            info = json.loads(frozen.read_text()) if frozen.exists() else {}
            notes.append(f"baseline {tag}: {info.get('rev', '?')} frozen on {info.get('date', '?')}, as triton@{tag}")
    return kernels


def _op_cases(family: OpFamily, ctx: dict) -> list:
    """The cases an op family runs, in order: the targets' case names on a GPU, the tiny tuples with --smoke."""
    if ctx["smoke"]:
        return list(family.smoke)
    names = ctx["bm"].case_names(family.name, False, ctx["device"])
    cases = ordered_cases(names, family.cases)
    if not cases:
        raise LookupError(f"no case of {names} matches {family.cases}")
    return cases


def _op_case(family: OpFamily, case, ctx: dict, kernels: dict[str, str], impls: set[str]) -> list:
    """The rows (benchmark.OpRow) of one case of an op family: ``impls``, with the baselines of ``kernels`` where
    the family's ``baseline_cases`` name the case."""
    name = case if isinstance(case, str) else case[0]
    if not any(fnmatch.fnmatchcase(name, p) for p in family.baseline_cases):
        kernels = {"triton": kernels["triton"]}
    return ctx["bm"].OPS[family.name](
        ctx["smoke"],
        ctx["dtype"],
        ctx["device"],
        "reference+compile" in impls,
        cases=[case],
        impls=impls,
        kernels=kernels,
    )


def _op_family(family: OpFamily, ctx: dict, notes: list[str]) -> Iterator[tuple[str, list[dict]]]:
    """The rows of one op family, case by case (benchmark.OPS[family.name] restricted to the targets' cases)."""
    kernels = _op_kernels(family, ctx, notes)
    impls = set(family.impls) | set(kernels)
    for case in _op_cases(family, ctx):
        rows = _op_case(family, case, ctx, kernels, impls)
        for row in rows:
            row.fraction_of_copy_bw = row.gbps / ctx["copy_bw"] if ctx.get("copy_bw") else None
            row.fraction_of_datasheet_bw = row.gbps / ctx["datasheet"] if ctx.get("datasheet") else None
        yield "ops", [asdict(r) for r in rows]


def _model_family(family: ModelFamily, ctx: dict, notes: list[str]) -> Iterator[tuple[str, list[dict]]]:
    """The train and infer rows of each model of a family; a peer measured earlier in this worker (same model,
    arguments, layout and sizes) is shared, not measured again."""
    shared = ctx["shared"]
    for entry in family.entries:
        if ctx["smoke"] and not entry.smoke:
            notes.append(f"{entry.model} ({entry.backend}) left out of --smoke (minutes through the interpreter)")
            continue
        key = json.dumps(
            [entry.model, entry.backend, _model_setup(family, entry, ctx), family.modes], sort_keys=True, default=str
        )
        if key in shared:
            source, rows = shared[key]
            rows = [replace(r, group=family.name, note=f"measured once, for {source}") for r in rows]
        else:
            rows = _model_rows(family, entry, ctx, family.modes)
            shared[key] = (family.name, rows)
        yield "models", [asdict(r) for r in rows]


def _model_setup(family: ModelFamily, entry: ModelEntry, ctx: dict) -> dict:
    """How a model of a family is built and fed: its constructor arguments (tiny with --smoke), batch, size and
    layout."""
    sizes = ctx["sizes"]
    batch, size = (sizes.seq_batch, sizes.seq_len) if family.sequence else (sizes.batch, sizes.img_size)
    return dict(
        kwargs=dict(entry.kwargs, **(SMOKE_MODEL_KWARGS.get(entry.model, {}) if ctx["smoke"] else {})),
        batch=batch,
        size=size,
        sequence=SEQUENCE if family.sequence else {},
        channels_last=family.channels_last,
        size_kwarg=family.size_kwarg,
    )


def _model_rows(family: ModelFamily, entry: ModelEntry, ctx: dict, modes: Sequence[str]) -> list:
    """The rows (benchmark.ModelRow) of one model of a family in ``modes``."""
    import timm

    import zoo  # noqa: F401  (registers the zoo's models with timm)

    setup = _model_setup(family, entry, ctx)
    with _environment(entry.env):
        return ctx["bm"].bench_model(
            family.name,
            entry.model,
            setup["kwargs"],
            entry.backend,
            setup["batch"],
            setup["size"],
            ctx["dtype"],
            ctx["device"],
            timm,
            sequence=setup["sequence"],
            channels_last=setup["channels_last"],
            size_kwarg=setup["size_kwarg"],
            modes=modes,
        )


@contextlib.contextmanager
def _environment(values: dict) -> Iterator[None]:
    """``os.environ`` updated with ``values`` inside the block, restored after it."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ------------------------------------------------------------------------------------------------ the parent


class Check:
    """The parent: runs the tiers, owns the results file (rewritten atomically after every row) and the log."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        self.children: set[subprocess.Popen] = set()
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        bm = _benchmark()
        import torch

        cuda = torch.cuda.is_available()
        if not cuda and not args.smoke:
            raise SystemExit("no CUDA device here: run the GPU check on a GPU machine, or --smoke on a CPU")
        device = torch.cuda.get_device_name(0) if cuda else f"CPU {platform.machine()}"
        out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-check-smoke-")) if args.smoke else RESULTS)
        out.mkdir(parents=True, exist_ok=True)
        stem = args.name or f"{bm._slug(device)}-{_dt.date.today().isoformat()}"
        self.path = out / f"{stem}.json"
        for n in range(2, 100):
            if not self.path.exists():
                break
            self.path = out / f"{stem}-{n}.json"
        self.readme = args.readme or (
            ROOT / "benchmarks" / "README.md" if out.resolve() == RESULTS else out / "README.md"
        )
        # the log beside the results (not in benchmarks/results/: the output there is the terminal's)
        logged = not args.no_log and out.resolve() != RESULTS
        self.log_file = open(out / "gpu-check.log", "a") if logged else None
        sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
        results = bm.Results(
            device,
            torch.__version__,
            getattr(sys.modules.get("triton"), "__version__", "none"),
            platform.python_version(),
            args.commit or bm._commit(),
            _dt.date.today().isoformat(),
            None,
            next((v for k, v in bm.DATASHEET_BANDWIDTH_GBPS.items() if k in device), None),
        )
        self.payload = asdict(results)
        self.payload["check"] = dict(
            mode="smoke" if args.smoke else "gpu",
            started=_dt.datetime.now().isoformat(timespec="seconds"),
            finished=None,
            budget_s=args.budget,
            tier_budgets_s=list(args.tier_budgets),
            settings=dict(
                dtype=args.dtype,
                batch=sizes.batch,
                img_size=sizes.img_size,
                sequences=dict(batch=sizes.seq_batch, length=sizes.seq_len),
                timing=sizes.timing,
                autotune_ms=dict(warmup=AUTOTUNE_MS[0], rep=AUTOTUNE_MS[1]) if cuda else None,
                injected=args.inject_failure,
            ),
            tiers={},
            warm={},
            families=[],
            targets=[],
        )
        self.families: dict[str, dict] = {}
        for tier in TIERS:
            for family in FAMILIES[tier]:
                self._family(tier, family.name, status="pending")
        self.save()

    # -- bookkeeping

    def log(self, message: str) -> None:
        """Print ``message`` and append it to the log file."""
        print(message, flush=True)
        if self.log_file:
            self.log_file.write(message + "\n")
            self.log_file.flush()

    def save(self) -> None:
        """Rewrite the results file atomically."""
        _atomic_write(self.path, json.dumps(self.payload, indent=1, default=str) + "\n")

    def _family(self, tier: str, name: str, **fields) -> dict:
        """The row of family ``tier:name`` in ``check.families``, created on first use, updated with ``fields``."""
        key = f"{tier}:{name}"
        if key not in self.families:
            self.families[key] = dict(tier=tier, family=name, status="pending", seconds=None, error=None)
            self.payload["check"]["families"].append(self.families[key])
        self.families[key].update(fields)
        return self.families[key]

    def finish_family(self, tier: str, name: str, status: str, seconds: float | None, error: str | None = None, **kw):
        """Record a family's outcome, save, and log one line."""
        self._family(
            tier, name, status=status, seconds=None if seconds is None else round(seconds, 1), error=error, **kw
        )
        self.save()
        time_note = "" if seconds is None else f" in {seconds:.1f} s"
        self.log(f"[{tier}] {name}: {status}{time_note}" + (f" - {error}" if error else ""))

    def selected(self, tier: str, name: str) -> bool:
        """Whether ``--families`` selects this family (all by default)."""
        return not self.args.families or any(_selects(p, tier, name) for p in self.args.families)

    def in_priority(self, tier: str, names: list[str]) -> list[str]:
        """:func:`by_priority` of ``names`` under this run's ``--families``."""
        return by_priority(tier, names, self.args.families)

    def tier_deadline(self, index: int) -> float:
        """The monotonic deadline of tier ``index``: cumulative tier budgets, capped by ``--budget``."""
        return min(self.start + sum(self.args.tier_budgets[: index + 1]), self.deadline)

    def kill(self, proc: subprocess.Popen) -> None:
        """End a child this check started, with everything it started (its own process group)."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        proc.wait()
        self.children.discard(proc)

    def _env(self) -> dict:
        """The children's environment: the checkout and scripts/ on PYTHONPATH, unbuffered output."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(SCRIPTS), env.get("PYTHONPATH")) if p)
        return env

    # -- tier 1: pytest processes

    def run_tests(self, deadline: float) -> None:
        """Tier 1: pytest processes, at most ``--test-parallel`` at once; on a GPU one per family (its own budget,
        its own crash), with --smoke one for all families (interpreter start-up costs more than the tests)."""
        overrides = _parse_budgets(self.args.family_budget)
        slack = SMOKE_SLACK if self.args.smoke else 1.0
        names = self.in_priority("tests", [f.name for f in TEST_FAMILIES if self.selected("tests", f.name)])
        by_name = {f.name: f for f in TEST_FAMILIES}
        families = [
            replace(by_name[n], budget_s=overrides.get(f"tests:{n}", by_name[n].budget_s * slack)) for n in names
        ]
        injected = _parse_injections(self.args.inject_failure)
        plain = [f for f in families if f"tests:{f.name}" not in injected]
        groups = [[f] for f in families] if not self.args.smoke else [[f] for f in families if f not in plain]
        if self.args.smoke and plain:
            groups.insert(0, plain)
        xdist = importlib.util.find_spec("xdist") is not None
        parallel = self.args.test_parallel or len(groups)
        pending, running = list(groups), []
        while pending or running:
            while pending and len(running) < parallel and time.monotonic() < deadline:
                group = pending.pop(0)
                running.append(self._start_tests(group, injected.get(f"tests:{group[0].name}"), xdist))
            if not running:
                break
            for job in list(running):
                group, proc, started, log, xml = job
                now = time.monotonic()
                over = now > started + max(f.budget_s for f in group) or now > deadline
                if proc.poll() is None and not over:
                    continue
                timed_out = proc.poll() is None
                if timed_out:
                    self.kill(proc)
                self.children.discard(proc)
                running.remove(job)
                self._finish_tests(group, proc.returncode, timed_out, now - started, log, xml)
            time.sleep(0.2)
        for group in pending:
            for family in group:
                self.finish_family("tests", family.name, "skipped", None, "out of time (tier 1 deadline)")

    def _start_tests(self, group: list[PytestFamily], inject: str | None, xdist: bool):
        """Start one pytest process over the families of ``group`` (or the injected failure of its one family)."""
        label = group[0].name if len(group) == 1 else "all"
        log, xml = self.work / f"tests-{label}.log", self.work / f"tests-{label}.xml"
        cmd = [sys.executable, "-m", "pytest", *(f.path for f in group), "-v", "-p", "no:cacheprovider"]
        cmd += ["-p", "gpu_check", "--junitxml", str(xml), "-o", "console_output_style=classic"]
        if self.args.smoke:  # each file's few interpreter tests (a file's name is a keyword of its tests)
            selection = " or ".join(f"({Path(f.path).stem} and ({f.smoke}))" for f in group)
            cmd += ["-m", "not gpu", "-k", selection]
        else:
            workers = max(f.workers for f in group)
            cmd += ["-m", "gpu"] + (["-n", str(workers)] if workers > 1 and xdist else [])
        if inject:
            sleep = "import time; time.sleep(10**6)"
            code = {"hang": sleep, "stall": sleep, "crash": "import os; os._exit(70)"}.get(
                inject, "raise SystemExit('injected failure (--inject-failure)')"
            )
            cmd = [sys.executable, "-c", code]
        env = self._env()
        env["GPU_CHECK_QUICK_AUTOTUNE"] = "1"
        for family in group:
            self._family("tests", family.name, status="running")
        with open(log, "w") as handle:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.children.add(proc)
        names = ", ".join(f.name for f in group)
        self.log(f"[tests] {names}: started" + (f" (injected {inject})" if inject else ""))
        return group, proc, time.monotonic(), log, xml

    def _finish_tests(
        self, group: list[PytestFamily], rc: int, timed_out: bool, seconds: float, log: Path, xml: Path
    ) -> None:
        """One row per family of ``group``, from the verbose outcome lines (kept even when the process was killed)
        and the JUnit report's failure messages."""
        text = log.read_text(errors="replace") if log.exists() else ""
        outcomes = parse_outcomes(text)
        junit = _junit_failures(xml)
        tail = " | ".join(text.strip().splitlines()[-3:])[:500]
        for family in group:
            mine = {n: o for n, o in outcomes.items() if n.startswith(family.path)}
            counts = {k.lower(): sum(v == k for v in mine.values()) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
            stem = Path(family.path).stem
            failures = [f for f in junit if stem in f["test"]] or [
                dict(test=n, message="") for n, o in mine.items() if o in ("FAILED", "ERROR")
            ]
            if timed_out:
                status, error = "timeout", f"over its budget of {family.budget_s:g} s (or the tier's deadline)"
            elif counts["failed"] or counts["error"]:
                status, error = "failed", f"{counts['failed']} failed, {counts['error']} errors"
            elif rc == 5:
                status, error = "no tests", "pytest selected no tests"
            elif rc not in (0, 1) or (rc == 1 and not mine):
                status, error = "failed", f"pytest exited with {rc}: {tail}"
            elif counts["passed"] == 0:
                status, error = "no tests", "no test of this file passed (none selected, or all skipped)"
            else:
                status, error = "ok", None
            self.finish_family(
                "tests", family.name, status, seconds, error, tests=counts, failures=failures[:20], returncode=rc
            )
        if any(self.families[f"tests:{f.name}"]["status"] != "ok" for f in group):
            for line in text.strip().splitlines()[-15:]:
                self.log(f"    {line}")

    # -- tiers 2 and 3: worker processes

    def run_workers(self, tier: str, deadline: float) -> None:
        """Tiers 2 and 3: workers over the tier's families until all are done or time runs out; a crashed
        worker is replaced by a fresh one for the families it left."""
        remaining = self.in_priority(tier, [f.name for f in FAMILIES[tier] if self.selected(tier, f.name)])
        if remaining and self.args.warm:
            self.warm(tier, remaining, deadline)
        slack = SMOKE_SLACK if self.args.smoke else 1.0
        budgets = {f.name: f.budget_s * slack for f in FAMILIES[tier]}
        overrides = _parse_budgets(self.args.family_budget).items()
        budgets.update({k.split(":", 1)[1]: v for k, v in overrides if k.startswith(tier + ":")})
        while remaining:
            if time.monotonic() >= deadline - 5:
                break
            progressed = self._worker(tier, remaining, budgets, deadline)
            if not progressed:
                break
        for name in remaining:
            self.finish_family(tier, name, "skipped", None, f"out of time (tier {tier} deadline) or no worker")

    def warm(self, tier: str, families: list[str], deadline: float) -> None:
        """Compile a tier's kernels on several cores before its worker times anything: ``--warm`` processes (at
        most ``WARM_PROCESSES[tier]``; :func:`warm_main`) run the Triton implementations of each case of
        ``families`` (ops), or the steps of each model :func:`warms` picks (models), once, untimed, each unit in one
        process, filling Triton's (and Inductor's) on-disk caches, which the timing worker then reads instead of
        compiling one kernel after another. They stop when every unit is done, or at ``WARM_SHARE`` of the time left
        to the tier (killed: what they compiled stays cached). Their results are thrown away; a unit that fails here
        is logged and fails again, reported, in the worker."""
        processes = min(self.args.warm, WARM_PROCESSES[tier])
        start = time.monotonic()
        stop = start + WARM_SHARE * max(0.0, deadline - start)
        claims = self.work / f"warm-{tier}"
        claims.mkdir()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--warm-worker", tier, "--only", ",".join(families)]
        cmd += ["--claims", str(claims), "--dtype", self.args.dtype, "--baseline-dir", str(self.args.baseline_dir)]
        cmd += ["--smoke"] if self.args.smoke else []
        logs = [self.work / f"warm-{tier}-{i}.log" for i in range(processes)]
        procs = []
        for log in logs:
            with open(log, "w") as handle:
                procs.append(
                    subprocess.Popen(
                        cmd, cwd=ROOT, env=self._env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
            self.children.add(procs[-1])
        self.log(f"[{tier}] warm-up: {processes} processes over {', '.join(families)}")
        while any(proc.poll() is None for proc in procs) and time.monotonic() < stop:
            time.sleep(0.2)
        stopped = sum(proc.poll() is None for proc in procs)
        for proc in procs:
            self.kill(proc)
        lines = [line for log in logs for line in log.read_text(errors="replace").splitlines()]
        units = max((int(line.split()[1]) for line in lines if re.fullmatch(r"units \d+", line)), default=0)
        warmed = sum(line.startswith("warmed ") for line in lines)
        failed = [line for line in lines if line.startswith("warm-up ")]
        seconds = time.monotonic() - start
        self.payload["check"]["warm"][tier] = dict(
            processes=processes, units=units, warmed=warmed, failed=failed[:20], seconds=round(seconds, 1)
        )
        self.save()
        cut = f"; {stopped} processes stopped at the warm-up deadline" if stopped else ""
        self.log(f"[{tier}] warm-up: {warmed} of {units} units in {seconds:.1f} s{cut}")
        for line in failed:
            self.log(f"    {line}")

    def _worker(self, tier: str, remaining: list[str], budgets: dict[str, float], deadline: float) -> bool:
        """One worker process over ``remaining`` (families are removed as they finish); True if any finished."""
        read_fd, write_fd = os.pipe()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", tier, "--only", ",".join(remaining)]
        cmd += ["--proto-fd", str(write_fd), "--dtype", self.args.dtype] + (["--smoke"] if self.args.smoke else [])
        for value in self.args.inject_failure:
            cmd += ["--inject-failure", value]
        for value in self.args.family_budget:
            cmd += ["--family-budget", value]
        cmd += ["--baseline-dir", str(self.args.baseline_dir)]
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self._env(),
            pass_fds=(write_fd,),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        os.close(write_fd)
        self.children.add(proc)
        events: queue.Queue = queue.Queue()
        tail: deque[str] = deque(maxlen=30)

        def read_events():
            with os.fdopen(read_fd) as stream:
                for line in stream:
                    events.put(line)
            events.put(None)

        def echo_output():
            for line in proc.stdout:
                tail.append(line.rstrip())
                self.log(f"  [{tier} worker] {line.rstrip()}")

        threads = [threading.Thread(target=read_events, daemon=True), threading.Thread(target=echo_output, daemon=True)]
        for thread in threads:
            thread.start()
        current, started, finished_any = None, None, False
        while True:
            try:
                line = events.get(timeout=0.25)
            except queue.Empty:
                now = time.monotonic()
                if current and now > started + budgets[current] + HARD_KILL_GRACE_S:
                    self.kill(proc)
                    self.finish_family(tier, current, "timeout", now - started, "killed: past its budget and grace")
                    remaining.remove(current)
                    return True
                if now > deadline:
                    self.kill(proc)
                    if current:
                        self.finish_family(tier, current, "timeout", now - started, f"killed: tier {tier} deadline")
                        remaining.remove(current)
                    return finished_any
                continue
            if line is None:  # the worker closed its end: finished, crashed or gave up on CUDA
                rc = proc.wait()
                self.children.discard(proc)
                threads[1].join(timeout=5)
                if current:
                    reason = f"worker exited with {rc} during the family: " + " | ".join(list(tail)[-3:])
                    self.finish_family(tier, current, "crashed", time.monotonic() - started, reason[:1000])
                    remaining.remove(current)
                    return True
                if remaining and not finished_any:  # it died before its first family: every later one would too
                    reason = f"worker exited with {rc} before its first family: " + " | ".join(list(tail)[-3:])
                    for name in list(remaining):
                        self.finish_family(tier, name, "failed", None, reason[:1000])
                    remaining.clear()
                return finished_any
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self.log(f"[{tier}] unreadable worker event: {line[:200]!r}")
                continue
            kind = event["event"]
            if kind == "info":
                self.payload["copy_bandwidth_gbps"] = event["copy_bandwidth_gbps"]
                self.payload["datasheet_bandwidth_gbps"] = event["datasheet_bandwidth_gbps"]
                self.save()
            elif kind == "start":
                current, started = event["family"], time.monotonic()
                self._family(tier, current, status="running")
                self.log(f"[{tier}] {current}: started (budget {event['budget_s']:g} s)")
            elif kind == "rows":
                self.payload[event["kind"]] += event["rows"]
                self.save()
            elif kind == "done":
                name = event["family"]
                self.finish_family(tier, name, event["status"], event["seconds"], event["error"], notes=event["notes"])
                for note in event["notes"]:
                    self.log(f"    note: {note}")
                remaining.remove(name)
                current, finished_any = None, True
            elif kind == "fatal":
                self.log(f"[{tier}] worker gave up: {event['reason']}; a fresh worker takes the remaining families")

    # -- the whole check

    def run(self) -> int:
        """Every tier, the README and the target lines; returns 0 if every family ran cleanly, else 1."""
        interrupted = None
        try:
            for tier in self.args.tiers:
                deadline = self.tier_deadline(TIERS.index(tier))
                tier_start = time.monotonic()
                self.log(f"== tier {tier} (deadline in {deadline - tier_start:.0f} s)")
                self.payload["check"]["tiers"][tier] = dict(status="running")
                try:
                    if tier == "tests":
                        self.run_tests(deadline)
                    else:
                        self.run_workers(tier, deadline)
                    status = "ok"
                except Exception as exc:  # the check's own bug: report it, go on with the next tier
                    status = f"failed: {type(exc).__name__}: {exc}"
                    traceback.print_exc()
                self.payload["check"]["tiers"][tier] = dict(
                    status=status, seconds=round(time.monotonic() - tier_start, 1)
                )
                self.save()
        except KeyboardInterrupt:
            interrupted = "interrupted (SIGINT/SIGTERM)"
            self.log(f"== {interrupted}: stopping the children")
            for tier in self.payload["check"]["tiers"].values():
                if tier["status"] == "running":
                    tier["status"] = "interrupted"
        finally:
            for proc in list(self.children):
                self.kill(proc)
        for key, family in self.families.items():
            if family["status"] in ("pending", "running"):
                tier, name = key.split(":", 1)
                status = "not selected" if not self.selected(tier, name) or tier not in self.args.tiers else "not run"
                self._family(tier, name, status=status, error=interrupted if status == "not run" else None)
        self.payload["check"]["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
        self.payload["check"]["seconds"] = round(time.monotonic() - self.start, 1)
        self.payload["check"]["targets"] = evaluate_targets(self.payload)
        self.save()
        try:
            self.readme.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.readme, _benchmark().render_markdown(RESULTS, extra=[self.path]))
            self.payload["check"]["tiers"]["readme"] = dict(status="ok", path=str(self.readme))
        except Exception as exc:
            self.payload["check"]["tiers"]["readme"] = dict(status=f"failed: {type(exc).__name__}: {exc}")
        self.save()
        failed = [k for k, f in self.families.items() if f["status"] not in ("ok", "not selected")]
        ran = [k for k, f in self.families.items() if f["status"] != "not selected"]
        self.log(f"== {len(ran) - len(failed)} of {len(ran)} families ok; not ok: {', '.join(failed) or 'none'}")
        self.log(f"== results {self.path}, table {self.readme}, {self.payload['check']['seconds']:.0f} s in all")
        for entry in self.payload["check"]["targets"]:
            self.log(target_line(entry))
        if self.log_file:
            self.log_file.close()
        shutil.rmtree(self.work, ignore_errors=True)
        return 1 if failed else 0


_OUTCOME = "(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)"
_OUTCOME_LINE = re.compile(rf"(\S+::\S+)\s+{_OUTCOME}\b|\b{_OUTCOME}\s+(\S+::\S+)")


def parse_outcomes(text: str) -> dict[str, str]:
    """Test node id -> outcome from pytest's verbose output: "nodeid OUTCOME" lines, "[gwN] [..%] OUTCOME nodeid"
    lines (pytest-xdist) and the short summary (the first outcome seen for a node counts)."""
    outcomes = {}
    for match in _OUTCOME_LINE.finditer(text):
        nodeid, result = (match.group(1), match.group(2)) if match.group(1) else (match.group(4), match.group(3))
        outcomes.setdefault(nodeid, result)
    return outcomes


def _junit_failures(path: Path) -> list[dict]:
    """(test, message) of each failed or erroring test case of a JUnit XML report ([] if there is none)."""
    if not path.exists():
        return []
    try:
        tree = ElementTree.parse(path)
    except ElementTree.ParseError:
        return []
    out = []
    for case in tree.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                name = f"{case.get('classname', '')}::{case.get('name', '')}"
                out.append(dict(test=name, message=(child.get("message") or "")[:500]))
    return out


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (the worker's hidden options included)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny sizes through the Triton interpreter")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default benchmarks/results; smoke: a temp)"
    )
    parser.add_argument("--name", default=None, help="results file name without .json (default <device>-<date>)")
    parser.add_argument("--readme", type=Path, default=None, help="table to regenerate (default as benchmark.py)")
    parser.add_argument("--commit", default=None, help="commit to record (the device's copy has no .git)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--budget", type=float, default=None, help=f"seconds for the whole run (default {BUDGET_S:g})")
    parser.add_argument(
        "--tier-budgets",
        type=lambda s: tuple(float(v) for v in s.split(",")),
        default=None,
        help=f"seconds per tier, tests,ops,models (cumulative deadlines; default {TIER_BUDGETS_S}, x3 with --smoke)",
    )
    parser.add_argument("--tiers", type=lambda s: tuple(s.split(",")), default=TIERS, help="tiers to run (a,b,..)")
    parser.add_argument(
        "--families",
        nargs="*",
        default=[],
        help="only these families (TIER:FAMILY patterns); within a tier they run in this order",
    )
    parser.add_argument("--test-parallel", type=int, default=0, help="pytest processes at once in tier 1")
    parser.add_argument(
        "--warm",
        type=int,
        default=None,
        help="warm-up processes before the ops and models tiers (0: none; default half the CPU cores, 1 with --smoke)",
    )
    parser.add_argument("--inject-failure", action="append", default=[], help="TIER:FAMILY[:raise|crash|hang|stall]")
    parser.add_argument("--family-budget", action="append", default=[], help="TIER:FAMILY=SECONDS (override)")
    parser.add_argument("--no-log", action="store_true", help="no gpu-check.log beside the results")
    parser.add_argument("--report", type=Path, default=None, help="print the target lines of a results file")
    parser.add_argument(
        "--readme-only", action="store_true", help="regenerate the table from benchmarks/results (and --out) and stop"
    )
    parser.add_argument(
        "--freeze-baseline", default=None, metavar="TAG", help="copy zoo/kernels to benchmarks/baseline/TAG"
    )
    parser.add_argument("--baseline-rev", default=None, help="git revision to freeze (default: the working tree)")
    parser.add_argument(
        "--baseline-dir", type=Path, default=BASELINES, help="where baselines are (default %(default)s)"
    )
    parser.add_argument("--worker", choices=TIERS[1:], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only", default="", help=argparse.SUPPRESS)
    parser.add_argument("--proto-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warm-worker", choices=TIERS[1:], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--claims", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warm is None:
        args.warm = 1 if args.smoke else max(1, (os.cpu_count() or 2) // 2)
    if args.budget is None:
        args.budget = BUDGET_S * (SMOKE_SLACK if args.smoke else 1.0)
    if args.tier_budgets is None:
        args.tier_budgets = tuple(b * (SMOKE_SLACK if args.smoke else 1.0) for b in TIER_BUDGETS_S)
    if len(args.tier_budgets) != len(TIERS) or any(t not in TIERS for t in args.tiers):
        parser.error(f"--tier-budgets takes {len(TIERS)} numbers and --tiers names from {TIERS}")
    _parse_injections(args.inject_failure)
    _parse_budgets(args.family_budget)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the check (or a worker, a report, the table, a baseline freeze); returns the exit status."""
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    if args.warm_worker:
        warm_main(args)
        return 0
    if args.freeze_baseline:
        try:
            folder = freeze_baseline(args.freeze_baseline, args.baseline_rev, args.baseline_dir)
        except (ValueError, FileExistsError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"--freeze-baseline: {exc}") from None
        print(f"froze {folder}: commit it with the targets that use it")
        return 0
    if args.report:
        results = json.loads(args.report.read_text())
        for entry in evaluate_targets(results):
            print(target_line(entry))
        return 0
    if args.readme_only:
        readme = args.readme or ROOT / "benchmarks" / "README.md"
        extra = sorted(args.out.glob("*.json")) if args.out else []
        _atomic_write(readme, _benchmark().render_markdown(RESULTS, extra=extra))
        print(f"wrote {readme}")
        return 0

    def stop(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, stop)
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
