"""Train a model of the zoo: ``python train.py model=kat_t`` (Hydra; see configs/train.yaml and README).

The last line of stdout is a JSON summary: best_top1, final_top1, epochs, run_dir, checkpoint, export.
Multi-GPU / multi-node: ``torchrun --nproc_per_node=N train.py ...`` (rank 0 writes and prints).
"""

from __future__ import annotations

import json
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


if __name__ == "__main__":
    main()
