"""Evaluate a trained model: ``python eval.py checkpoint=RUN_DIR data=digits`` (Hydra; see configs/eval.yaml).

``checkpoint`` is a train.py checkpoint (last.pt / best.pt), a run directory (its last.pt) or an export directory;
or give ``model=NAME pretrained_file=PATH``. Writes metrics.json and confusion_matrix.png to ``out_dir``. The last
line of stdout is a JSON summary: top1, top5, loss, images_per_s, peak_memory_bytes, num_images, out_dir,
metrics_file, confusion_matrix.
"""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from zoo.training.evaluation import run_eval

    summary = run_eval(cfg)
    sys.stderr.flush()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
