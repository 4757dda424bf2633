"""Train a model of the zoo from a checkout: ``python train.py model=kat_t`` (Hydra; configs/train.yaml, README).

The same command as the installed ``zoo-train`` (:func:`zoo.cli.train`), reading the ``configs/`` folder beside
this file. Multi-GPU / multi-node: ``torchrun --nproc_per_node=N train.py ...`` (rank 0 writes and prints).
"""

from pathlib import Path

from zoo.cli import train

if __name__ == "__main__":
    train(config_path=str(Path(__file__).resolve().parent / "configs"))
