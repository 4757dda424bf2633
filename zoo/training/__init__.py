"""Training: the run behind train.py (``train``), optimiser groups, atomic checkpoints, RNG state capture,
export to timm's local-dir layout.

Imports only torch, numpy, timm and safetensors (no hydra, wandb, matplotlib or scikit-learn).
"""

from zoo.training.checkpoint import (
    CHECKPOINT_FORMAT,
    SAFE_CHECKPOINT_GLOBALS,
    CheckpointError,
    UntrustedCheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_weights_file,
    resolve_checkpoint_path,
    restore_rng_state,
    save_checkpoint,
)
from zoo.training.evaluation import evaluate_classifier
from zoo.training.export import export_model
from zoo.training.optim import create_optimizer, param_groups
from zoo.training.trainer import train

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "SAFE_CHECKPOINT_GLOBALS",
    "UntrustedCheckpointError",
    "capture_rng_state",
    "create_optimizer",
    "evaluate_classifier",
    "export_model",
    "load_checkpoint",
    "load_weights_file",
    "param_groups",
    "resolve_checkpoint_path",
    "restore_rng_state",
    "save_checkpoint",
    "train",
]
