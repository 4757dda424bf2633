"""zoo: efficient architectures with hand-written Triton kernels, timm-compatible.

Importing ``zoo`` pulls in only torch, triton, timm, einops and safetensors (no hydra, wandb, matplotlib or
scikit-learn: those belong to the entry points).
"""

from zoo import layers, models
from zoo.layers import KAN, GroupRational
from zoo.models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["layers", "models", "create_model", "list_models", "GroupRational", "KAN", "__version__"]
