"""The command-line entry points: ``zoo-train`` (``python train.py``) and ``zoo-eval`` (``python eval.py``).

Both are Hydra applications over the same configs. The installed commands read them from the package
``zoo.configs`` (the wheel ships the repository's ``configs/`` folder under that name; an editable install maps
it to the folder); ``train.py`` and ``eval.py`` in a checkout read the folder beside them, so they also run
without an install (``PYTHONPATH=. python train.py ...``). Run directories go under the current folder
(``runs/<model>-<data>/<time>/``, ``runs/eval/<time>/``), and the last line of stdout is the run's JSON summary.

This module imports hydra: it belongs to the entry points, not to the library (``import zoo`` never loads it).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

PACKAGE_CONFIGS = "pkg://zoo.configs"


def _print_summary(summary: dict[str, Any]) -> None:
    sys.stderr.flush()  # the progress bar and logs first: the summary is the last line
    print(json.dumps(summary), flush=True)


def _train(cfg: DictConfig) -> None:
    from zoo.training.trainer import train as run_training

    summary = run_training(cfg)  # None on the ranks other than 0 under torchrun
    if summary is not None:
        _print_summary(summary)


def _evaluate(cfg: DictConfig) -> None:
    from zoo.training.evaluation import run_eval

    _print_summary(run_eval(cfg))


def _quiet_hydra_on_other_ranks() -> None:
    """Under torchrun only rank 0 writes: the other ranks' Hydra writes no config, log or run directory of its
    own (the run directory is rank 0's, shared by broadcast)."""
    if os.environ.get("RANK", "0") == "0":
        return
    sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    if not any(arg.startswith("hydra.run.dir=") for arg in sys.argv):
        sys.argv.append("hydra.run.dir=.")


def train(config_path: str = PACKAGE_CONFIGS) -> None:
    """``zoo-train model=kat_t [data=...] [KEY=VALUE ...]``: train a model (configs ``train.yaml``; README).

    Multi-GPU / multi-node: ``torchrun --nproc_per_node=N $(which zoo-train) ...`` (rank 0 writes and prints).
    The last line of stdout is a JSON summary: best_top1, final_top1, epochs, run_dir, checkpoint, export.
    """
    _quiet_hydra_on_other_ranks()
    hydra.main(config_path=config_path, config_name="train", version_base="1.3")(_train)()


def evaluate(config_path: str = PACKAGE_CONFIGS) -> None:
    """``zoo-eval checkpoint=RUN_DIR [data=...]``: evaluate a trained model (configs ``eval.yaml``; README).

    ``checkpoint`` is a training checkpoint (last.pt / best.pt), a run directory (its last.pt) or an export
    directory; or give ``model=NAME pretrained_file=PATH``. Writes metrics.json and confusion_matrix.png to
    ``out_dir``; the last line of stdout is a JSON summary (top1, top5, loss, images_per_s, ...).
    """
    hydra.main(config_path=config_path, config_name="eval", version_base="1.3")(_evaluate)()
