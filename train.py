"""Train a model of the zoo: ``python train.py model=kat_t`` (Hydra; see configs/train.yaml and README).

The last line of stdout is a JSON summary: best_top1, final_top1, epochs, run_dir, checkpoint, export.
Multi-GPU / multi-node: ``torchrun --nproc_per_node=N train.py ...`` (rank 0 writes and prints).
"""

from __future__ import annotations

import json
import os
import sys

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from zoo.training.trainer import train

    summary = train(cfg)  # None on the ranks other than 0 under torchrun
    if summary is not None:
        sys.stderr.flush()
        print(json.dumps(summary), flush=True)


def _quiet_hydra_on_other_ranks() -> None:
    """Under torchrun only rank 0 writes: the other ranks' Hydra writes no config, log or run directory of its
    own (the run directory is rank 0's, shared by broadcast)."""
    if os.environ.get("RANK", "0") == "0":
        return
    sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    if not any(arg.startswith("hydra.run.dir=") for arg in sys.argv):
        sys.argv.append("hydra.run.dir=.")


if __name__ == "__main__":
    _quiet_hydra_on_other_ranks()
    main()
