"""Train every family's smallest model on its default task and record what it reaches: the README's table.

Each row is one ``python train.py model=NAME`` with no other argument (the model's default data and recipe,
configs/train.yaml), run in a subprocess with its run directory under ``--runs`` (the checkout stays clean). The
row's numbers are measured here: the task and its image size or sequence length from the run's resolved config and
data, the epochs and the final test top-1 (the last epoch's, not the best) from the run's summary, and the minutes
of wall-clock time of the whole command on this machine. Writes the rows (with the machine) to a results JSON and
prints the markdown table; ``--readme`` also puts the table between the README's markers.

    python scripts/train_defaults.py                          # every family; benchmarks/results/cpu/...json
    python scripts/train_defaults.py --models kat_t s4d_t     # some of them
    python scripts/train_defaults.py --readme                 # ... and the table into README.md

Exit status 1 when a run fails or misses the target (``--min-top1`` percent within ``--max-minutes``).
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # zoo from this checkout, installed or not

from scripts._host import cpu_name  # noqa: E402

MODELS = ("kat_t", "inceptionnext_a", "unireplknet_a", "nat_m", "dinat_m", "s4d_t", "longconv_t")
"""Every family's smallest model, in the README's order."""
START_MARKER = "<!-- train-defaults:start -->"
END_MARKER = "<!-- train-defaults:end -->"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "cpu"


def machine() -> dict[str, Any]:
    """The machine the runs timed: CPU model, the cores this process may use, Python and torch versions."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_name(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def _last_json_line(text: str) -> dict[str, Any]:
    """The run's summary: the last line of train.py's stdout that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("train.py printed no JSON summary")


def input_description(config: dict[str, Any]) -> tuple[str, str]:
    """(``"image"`` or ``"sequence"``, e.g. ``"32 px"`` / ``"length 64"``) of a run's data, from its resolved
    config: the shape of one test item as the run made it (``img_size``, else ``data.img_size``)."""
    from zoo.data import create_dataset

    data = config["data"]
    img_size = config.get("img_size") or data.get("img_size")
    dataset = create_dataset(data["name"], "test", root=data.get("root"), img_size=img_size)
    item = dataset[0][0]
    if item.dim() == 3:  # C, H, W
        return "image", f"{item.shape[-1]} px" if item.shape[-1] == item.shape[
            -2
        ] else f"{item.shape[-2]}x{item.shape[-1]} px"
    return "sequence", f"length {item.shape[0]}"


def run_default(
    model: str, runs: Path, overrides: Sequence[str] = (), timeout_s: float | None = None
) -> dict[str, Any]:
    """Run ``python train.py model=MODEL`` (its default task and recipe) with its run directory in ``runs/MODEL``;
    returns the measured row: model, data, kind, size, epochs, minutes, final_top1, best_top1, run_dir, overrides.
    ``overrides`` (KEY=VALUE) change the run: for a quick check of this script, not for the table.

    Raises:
        RuntimeError: train.py failed (its stderr's end in the message).
    """
    run_dir = runs / model
    command = [sys.executable, str(ROOT / "train.py"), f"model={model}", "progress=false"]
    command += [f"run_dir={run_dir}", f"hydra.run.dir={run_dir}", *overrides]  # run_dir: where it writes
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout_s)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    summary = _last_json_line(result.stdout)
    import yaml

    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    kind, size = input_description(config)
    return {
        "model": model,
        "data": summary["data"],
        "kind": kind,
        "size": size,
        "epochs": summary["epochs"],
        "minutes": round(seconds / 60, 2),
        "final_top1": round(float(summary["final_top1"]), 2),
        "best_top1": round(float(summary["best_top1"]), 2),
        "run_dir": str(run_dir),
        "overrides": list(overrides),
    }


def markdown_table(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """The README's table of ``rows`` (one per model), with a line naming the machine that timed them."""
    lines = [
        "| model | task | image size / length | epochs | minutes | final top-1 (%) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| `{row['model']}` | {row['data']} | {row['size']} | {row['epochs']} | {row['minutes']:.1f} | "
            f"{row['final_top1']:.1f} |"
        )
    lines.append("")
    extra = sorted({override for row in rows for override in row.get("overrides", [])})
    command = (
        "`python train.py model=NAME`, nothing else" if not extra else f"`python train.py model=NAME {' '.join(extra)}`"
    )
    lines.append(
        f"{command}; measured by `python scripts/train_defaults.py` on {info['cores']} cores of {info['cpu']} "
        f"(torch {info['torch']}, torch threads: {info['torch_threads']}), {info['date']}. Final top-1: the last "
        f"epoch's test accuracy."
    )
    return "\n".join(lines)


def replace_between_markers(text: str, table: str, start: str = START_MARKER, end: str = END_MARKER) -> str:
    """``text`` with what lies between the ``start`` and ``end`` markers (HTML comments) replaced by ``table``
    (the markers stay, each on its own line).

    Raises:
        ValueError: a marker is missing, repeated, or the end comes before the start.
    """
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"expected one {start} and one {end} in the README")
    if text.index(end) < text.index(start):
        raise ValueError(f"{end} comes before {start}")
    head, rest = text.split(start)
    tail = rest.split(end)[1]
    return f"{head}{start}\n{table}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Run the defaults, write the results JSON, print the table (and put it in the README with ``--readme``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=f"default: {' '.join(MODELS)}")
    parser.add_argument("--runs", type=Path, default=None, help="run directories go here (default: a new temp dir)")
    parser.add_argument(
        "--out", type=Path, default=None, help="the results JSON (default: under benchmarks/results/cpu)"
    )
    parser.add_argument(
        "--readme",
        nargs="?",
        const=ROOT / "README.md",
        type=Path,
        default=None,
        help=f"replace the text between {START_MARKER} and {END_MARKER} in this file (default README.md)",
    )
    parser.add_argument("--min-top1", type=float, default=90.0, help="target final top-1, percent (default 90)")
    parser.add_argument("--max-minutes", type=float, default=5.0, help="target minutes per run (default 5)")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="extra train.py overrides for every run, to check this script quickly (e.g. epochs=1); the rows "
        "record them, and they are then not the defaults' numbers",
    )
    args = parser.parse_args(argv)

    runs = args.runs or Path(tempfile.mkdtemp(prefix="train_defaults-"))
    info = {**machine(), "date": _dt.date.today().isoformat()}
    rows, failures = [], []
    for model in args.models:
        print(f"training {model} ...", file=sys.stderr, flush=True)
        try:
            row = run_default(model, runs, args.set)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as error:
            failures.append(f"{model}: {error}")
            continue
        row["meets_target"] = row["final_top1"] >= args.min_top1 and row["minutes"] <= args.max_minutes
        if not row["meets_target"]:
            failures.append(f"{model}: {row['final_top1']}% in {row['minutes']} min")
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    out = args.out or DEFAULT_RESULTS / f"train_defaults-{info['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    target = {"min_top1": args.min_top1, "max_minutes": args.max_minutes}
    out.write_text(json.dumps({"machine": info, "target": target, "rows": rows, "failures": failures}, indent=2) + "\n")
    table = markdown_table(rows, info)
    print(table)
    if args.readme is not None:
        args.readme.write_text(replace_between_markers(args.readme.read_text(), table))
    print(f"results: {out}; runs: {runs}", file=sys.stderr)
    for failure in failures:
        print(f"missed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
