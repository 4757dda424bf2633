"""KAT: Kolmogorov-Arnold Transformer (Yang & Wang, ICLR 2025): a ViT whose MLPs are group-rational KANs.

Registered with timm as ``kat_t``, ``kat_s``, ``kat_b`` (the official ``kat_{tiny,small,base}_patch16_224``).
The model is timm's ``VisionTransformer`` (patch 16, class token, qkv bias, LayerNorm eps 1e-6, mlp ratio 4)
with :class:`zoo.layers.KAN` as its MLP (and :class:`KATBlock`, timm's block with ``norm2`` and the KAN's first
activation fused on the Triton path), so state-dict keys equal the official checkpoints'
(``blocks.{i}.mlp.{fc1,act1,act2,fc2}``) and timm's ViT machinery (``forward_intermediates``, features,
gradient checkpointing, ``reset_classifier``, ...) applies unchanged.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.vision_transformer import Block, VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter_fn
from torch import nn

from zoo.layers.kan import KAN
from zoo.layers.rational import GroupRational, variance_preserving_gain
from zoo.models._checkpoint import unwrap_state_dict
from zoo.models._registry import register_model

__all__ = ["KAT", "KATBlock", "checkpoint_filter_fn", "kat_t", "kat_s", "kat_b"]


class KATBlock(Block):
    """timm's ViT block whose MLP half is ``mlp.forward_normed(x, norm2)``: the same modules, keys and function, with
    ``norm2`` and the KAN's first activation one Triton op where the activations run Triton
    (:meth:`zoo.layers.KAN.forward_normed`). Arguments after ``x`` go to the attention as timm passes them."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), *args, **kwargs)))
        return x + self.drop_path2(self.ls2(self.mlp.forward_normed(x, self.norm2)))


class KAT(VisionTransformer):
    """Vision Transformer with group-rational KAN MLPs (GR-KAN).

    Args:
        num_groups: channel groups of every rational activation (8 in the paper).
        act_init: init of each MLP's second activation: ``"swish"`` (released models), ``"gelu"`` or
            ``"identity"``; the first one always starts as the identity.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` for the rational activations.
        weight_init: ``"kan"`` (the variance-preserving init, see :meth:`init_weights`) or ``"skip"``.
        **kwargs: timm ``VisionTransformer`` arguments (``img_size``, ``patch_size``, ``in_chans``,
            ``num_classes``, ``embed_dim``, ``depth``, ``num_heads``, ``drop_path_rate``, ...).
    """

    def __init__(
        self,
        num_groups: int = 8,
        act_init: str = "swish",
        backend: str = "auto",
        weight_init: str = "kan",
        **kwargs: Any,
    ) -> None:
        if "mlp_layer" in kwargs:
            raise TypeError("KAT builds its own MLPs (KAN); mlp_layer cannot be given")
        if weight_init not in ("kan", "skip"):
            raise ValueError(f"weight_init must be 'kan' or 'skip', got {weight_init!r}")
        mlp_layer = partial(KAN, num_groups=num_groups, act_init=act_init, backend=backend)
        kwargs.setdefault("block_fn", KATBlock)
        super().__init__(mlp_layer=mlp_layer, weight_init="skip", **kwargs)
        self.num_groups = num_groups
        self.act_init = act_init
        if weight_init == "kan":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        """KAT's variance-preserving init, as the paper intends (docs/semantics.md §1.3), drawn from torch's generator
        only.

        fc1: kaiming-normal, fan-in, gain 1 (its input passes act1, the identity at init); fc2: normal with
        std gain / sqrt(fan_in), gain^2 = 1 / E[act2(x)^2] for x ~ N(0, 1); qkv: xavier-uniform for each of
        the q, k, v blocks; every other linear layer: trunc-normal std 0.02; biases zero; position embedding
        trunc-normal 0.02, class token normal 1e-6; norms, patch embedding and rational coefficients reset to
        their own defaults. ``mode`` and ``needs_reset`` exist for timm's interface; only ``""``/``"kan"``.
        """
        if mode not in ("", "kan", "reset"):
            raise ValueError(f"KAT supports only its own init ('kan'), got mode={mode!r}")
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        fc2_gain = variance_preserving_gain(self.act_init)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                weight = module.weight
                if name.endswith("mlp.fc1"):
                    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="linear")
                elif name.endswith("mlp.fc2"):
                    nn.init.normal_(weight, std=fc2_gain / math.sqrt(weight.shape[1]))
                elif name.endswith("attn.qkv"):
                    for block in weight.chunk(3, dim=0):
                        nn.init.xavier_uniform_(block)
                else:
                    trunc_normal_(weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (GroupRational, nn.LayerNorm, nn.Conv2d)):
                module.reset_parameters()


def checkpoint_filter_fn(state_dict: dict[str, Any], model: KAT) -> dict[str, torch.Tensor]:
    """Adapt a checkpoint to ``model``: our own, or the official KAT releases.

    Unwraps a training checkpoint and strips a ``module.`` prefix (:func:`zoo.models._checkpoint.unwrap_state_dict`),
    then applies timm's ViT filter, which resamples the position embedding to another image size (and the patch
    embedding to another patch size).
    """
    return vit_checkpoint_filter_fn(unwrap_state_dict(state_dict), model)


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "paper_ids": "arXiv:2409.10594",
        "origin_url": "https://github.com/Adamdad/kat",
        **kwargs,
    }


_OFFICIAL = "https://huggingface.co/adamdad/kat_pretained/resolve/main/"
default_cfgs = generate_default_cfgs(
    {
        # ImageNet-1k from scratch, the official releases (top-1 74.6 / 81.2 / 82.3).
        "kat_t.in1k": _cfg(
            url=_OFFICIAL + "kat_tiny_patch16_224_1f3ad3b2e69821f3d412f2924cf159a0e266f142d739cb68f68f796f5a0fe289.pth"
        ),
        "kat_s.in1k": _cfg(
            url=_OFFICIAL + "kat_small_patch16_224_32487885cf13d2c14e461c9016fac8ad43f7c769171f132530941e930aeb5fe2.pth"
        ),
        "kat_b.in1k": _cfg(
            url=_OFFICIAL + "kat_base_patch16_224_abff874d925d756d15cde97303f772a3460ddbd44b9c53fb9ce5cf15be230fb6.pth"
        ),
    }
)


def _create_kat(variant: str, pretrained: bool = False, **kwargs: Any) -> KAT:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        KAT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


@register_model
def kat_t(pretrained: bool = False, **kwargs: Any) -> KAT:
    """KAT-T: 192 dim, 12 blocks, 3 heads; 5,718,328 parameters."""
    return _create_kat("kat_t", pretrained, **dict(dict(embed_dim=192, depth=12, num_heads=3), **kwargs))


@register_model
def kat_s(pretrained: bool = False, **kwargs: Any) -> KAT:
    """KAT-S: 384 dim, 12 blocks, 6 heads; 22,051,576 parameters."""
    return _create_kat("kat_s", pretrained, **dict(dict(embed_dim=384, depth=12, num_heads=6), **kwargs))


@register_model
def kat_b(pretrained: bool = False, **kwargs: Any) -> KAT:
    """KAT-B: 768 dim, 12 blocks, 12 heads; 86,568,568 parameters."""
    return _create_kat("kat_b", pretrained, **dict(dict(embed_dim=768, depth=12, num_heads=12), **kwargs))
