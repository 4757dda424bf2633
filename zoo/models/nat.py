"""NAT and DiNAT: the Neighborhood Attention Transformer (Hassani, Walton, Li, Li & Shi, CVPR 2023) and the Dilated
Neighborhood Attention Transformer (Hassani & Shi, 2022).

Registered with timm as ``nat_m``, ``nat_t``, ``nat_s``, ``nat_b`` and ``dinat_m``, ``dinat_t``, ``dinat_s``,
``dinat_b``, ``dinat_l`` (the official ``nat_mini`` ... ``dinat_large``). The module layout and state-dict keys are
those of the official ``classification/nat.py`` (SHI-Labs/Neighborhood-Attention-Transformer), so the released
checkpoints load strictly: ``patch_embed.proj.{0,1}`` (two 3x3 stride-2 convolutions) and ``patch_embed.norm``
(LayerNorm, channels last), ``levels.{i}.blocks.{j}.{norm1, attn.{qkv, rpb, proj}, norm2, mlp.{fc1, fc2}, gamma1,
gamma2}`` (``gamma`` only with layer scale), ``levels.{i}.downsample.{reduction, norm}`` (3x3 stride-2 convolution
without bias, LayerNorm; at the end of levels 0-2), ``norm`` and ``head``. DiNAT is NAT with the dilation of every
other layer raised (:func:`dinat_dilations`); the attention is :class:`zoo.layers.NeighborhoodAttention2D`
(relative position bias included: NATTEN >= 0.20 dropped it and cannot run these checkpoints).

The network runs channels last ([N, H, W, C]) after the tokenizer, as the official one: ``forward_features``
returns the unpooled, normalised ``[N, H/32, W/32, C]`` map (``model.output_fmt == "NHWC"``, as timm's Swin);
``forward_head`` averages it over (H, W) (the official model pooled inside ``forward_features``);
``forward_intermediates`` and ``features_only`` give NCHW stage outputs (before each level's downsampler).

Input size: any. A stage whose map is smaller than kernel x dilation on an axis is zero-padded at its end for the
attention and cropped back, as the official models did with NATTEN <= 0.14 (the layer does it). Nothing is padded
from 224x224 up (7 x 32) for NAT and for DiNAT at its default 224 dilations; below, the padded stages cost as much as
at 224. DiNAT's dilations follow the input size the model is built for (``img_size``, default 224; the official
rule, see :func:`dinat_dilations`): a model built at 384 has the official ``dinat_large_384`` dilations.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, resolve_pretrained_cfg
from torch import Tensor, nn

from zoo._timm import feature_take_indices
from zoo.layers._fused_modules import scaled_residual
from zoo.layers.neighborhood import NeighborhoodAttention2D
from zoo.models._checkpoint import unwrap_state_dict
from zoo.models._registry import register_model

__all__ = [
    "NAT",
    "checkpoint_filter_fn",
    "dinat_b",
    "dinat_dilations",
    "dinat_l",
    "dinat_m",
    "dinat_s",
    "dinat_t",
    "nat_b",
    "nat_m",
    "nat_s",
    "nat_t",
]


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"img_size must be one int or (height, width), got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def stage_sizes(img_size: int | tuple[int, int], num_levels: int = 4) -> list[tuple[int, int]]:
    """The (height, width) of every level's map for an ``img_size`` input: two stride-2 convolutions (padding 1)
    in the tokenizer, one before every further level: ceil(side / 4), then halved (rounded up)."""
    h, w = _pair(img_size)
    h, w = (h + 1) // 2, (w + 1) // 2
    sizes = []
    for _ in range(num_levels):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


def dinat_dilations(
    depths: tuple[int, ...], img_size: int | tuple[int, int] = 224, kernel_size: int = 7
) -> tuple[tuple, ...]:
    """DiNAT's dilations per layer: in every level the layers alternate dilation 1 (NA) and the largest dilation
    whose window still fits the level's map, floor(side / kernel_size) (DiNA), starting with 1.

    The official model definitions (classification/dinat.py) list these values: at 224 px with kernel 7 (maps 56, 28,
    14, 7): 1-8-1, 1-4-1-4, 1-2-1-2..., 1-1-1...; at 384 (96, 48, 24, 12; ``dinat_large_384``): 1-13-1, 1-6-1-6,
    1-3-1-3..., 1-1-1...; at 384 with kernel 11 (``dinat_large_384_11x11``): 1-8-1, 1-4-1-4, 1-2..., 1-1.... A
    non-square ``img_size`` gets a (height, width) dilation where the two differ.
    """
    stages = []
    for depth, (h, w) in zip(depths, stage_sizes(img_size, len(depths)), strict=True):
        dh, dw = max(h // kernel_size, 1), max(w // kernel_size, 1)
        dilated = dh if dh == dw else (dh, dw)
        stages.append(tuple(1 if j % 2 == 0 else dilated for j in range(depth)))
    return tuple(stages)


@register_notrace_function  # a leaf for torch.fx: it branches on shapes
def check_images(x: Tensor, in_chans: int) -> Tensor:
    """Return ``x`` if it is an image batch ``[N, in_chans, H, W]``; else raise ValueError."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"NAT expects images [N, C, H, W] (NCHW or channels_last) with C = in_chans = {in_chans}, "
            f"got shape {list(x.shape)}"
        )
    return x


class ConvTokenizer(nn.Module):
    """The official stem: Conv3x3 s2 (C/2) -> Conv3x3 s2 (C) -> LayerNorm; NCHW in, NHWC out."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 64) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """The official downsampler: Conv3x3 s2 without bias (C -> 2C) -> LayerNorm; NHWC in and out."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NATLayer(nn.Module):
    """A NAT / DiNAT layer (NHWC): x + gamma1 * NA(LN(x)), then x + gamma2 * MLP(LN(x)) (gammas only with layer
    scale; stochastic depth on both branches)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        dilation: int | tuple[int, int] = 1,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.dim, self.num_heads, self.mlp_ratio = dim, num_heads, mlp_ratio
        self.kernel_size, self.dilation = kernel_size, dilation
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2D(
            dim,
            num_heads,
            kernel_size,
            dilation=dilation,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            backend=backend,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.layer_scale = layer_scale is not None and layer_scale > 0
        if self.layer_scale:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: Tensor) -> Tensor:
        if self.layer_scale:
            x = scaled_residual(x, self.gamma1, self.attn(self.norm1(x)), self.drop_path)
            return scaled_residual(x, self.gamma2, self.mlp(self.norm2(x)), self.drop_path)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class NATLevel(nn.Module):
    """A level (the official ``NATBlock``): ``blocks`` (NAT layers), then ``downsample`` (or None in the last)."""

    def __init__(self, blocks: list[NATLayer], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(x)
        return x if self.downsample is None else self.downsample(x)


class NAT(nn.Module):
    """NAT / DiNAT for image classification, with timm's interface.

    Args:
        in_chans: input channels.
        num_classes: classes (0: no classifier, ``forward`` returns the pooled features).
        embed_dim: channels of the first level (doubled at every level).
        depths: layers per level.
        num_heads: attention heads per level.
        mlp_ratio: MLP width in units of the layer width.
        kernel_size: neighbourhood size (odd).
        dilations: one dilation per layer (one sequence per level; an int or (h, w) each); an int: that one for
            every layer (None or 1: NAT); ``"auto"``: DiNAT's rule at ``img_size`` (:func:`dinat_dilations`; the
            default of the ``dinat_*`` models, ``dilations=1`` turns one into NAT).
        img_size: the input size DiNAT's ``"auto"`` dilations are chosen for (nothing else depends on it).
        layer_scale: initial layer scale (None or 0: none; the official NAT-S/B and DiNAT-B use 1e-5).
        qkv_bias, qk_scale: the attention's ``qkv`` bias and logit scale (default head_dim ** -0.5).
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after the tokenizer, the attention projection and the MLP (the official ``drop``).
        attn_drop_rate: dropout on the attention probabilities (training then runs the reference attention).
        drop_path_rate: stochastic depth, linear from 0 to this over the layers (the official model functions set
            0.2 / 0.2 / 0.3 / 0.5 for mini / tiny / small / base and 0.35 for DiNAT-L; the default here is 0).
        global_pool: ``"avg"`` or ``""`` (no pooling: ``forward_head`` returns NHWC).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` for every neighborhood attention.
        device, dtype: where and in which dtype to build the parameters (``device="meta"`` builds no storage).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 64,
        depths: tuple[int, ...] = (3, 4, 6, 5),
        num_heads: tuple[int, ...] = (2, 4, 8, 16),
        mlp_ratio: float = 3.0,
        kernel_size: int = 7,
        dilations: str | int | tuple[tuple, ...] | None = None,
        img_size: int | tuple[int, int] = 224,
        layer_scale: float | None = None,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths!r} and num_heads {num_heads!r} must have one entry per level")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if dilations is None or isinstance(dilations, int):  # one dilation for every layer (None: 1, NAT)
            dilations = tuple((dilations or 1,) * d for d in depths)
        elif isinstance(dilations, str):
            if dilations != "auto":
                raise ValueError(f"dilations must be an int, 'auto' or one sequence per level, got {dilations!r}")
            dilations = dinat_dilations(depths, img_size, kernel_size)
        dilations = tuple(tuple(level) for level in dilations)
        if [len(level) for level in dilations] != list(depths):
            raise ValueError(f"dilations {dilations!r} do not match depths {depths!r} (one per layer)")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_levels = len(depths)
        self.embed_dim, self.depths, self.num_heads = embed_dim, depths, num_heads
        self.kernel_size, self.dilations, self.img_size = kernel_size, dilations, img_size
        self.mlp_ratio = mlp_ratio
        self.backend = backend
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.output_fmt = "NHWC"
        self.num_features = self.head_hidden_size = int(embed_dim * 2 ** (self.num_levels - 1))
        self.grad_checkpointing = False

        with torch.device(device) if device is not None else nullcontext():
            self.patch_embed = ConvTokenizer(in_chans, embed_dim)
            self.pos_drop = nn.Dropout(proj_drop_rate)
            rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
            self.levels = nn.ModuleList()
            self.feature_info = []
            cursor = 0
            for i in range(self.num_levels):
                dim = int(embed_dim * 2**i)
                blocks = [
                    NATLayer(
                        dim,
                        num_heads[i],
                        kernel_size,
                        dilation=dilations[i][j],
                        mlp_ratio=mlp_ratio,
                        qkv_bias=qkv_bias,
                        qk_scale=qk_scale,
                        proj_drop=proj_drop_rate,
                        attn_drop=attn_drop_rate,
                        drop_path=rates[cursor + j],
                        layer_scale=layer_scale,
                        backend=backend,
                    )
                    for j in range(depths[i])
                ]
                downsample = ConvDownsampler(dim) if i < self.num_levels - 1 else None
                self.levels.append(NATLevel(blocks, downsample))
                cursor += depths[i]
                self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"levels.{i}.blocks"))
            self.norm: nn.Module = nn.LayerNorm(self.num_features)
            self.head_drop = nn.Dropout(drop_rate)
            self.head: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
            self.apply(self._init_weights)
        if dtype is not None:
            self.to(dtype)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """The official init: trunc-normal std 0.02 for linear weights, zero biases, LayerNorm 1 / 0 (convolutions
        keep PyTorch's default; ``rpb`` its trunc-normal std 0.02 from the layer)."""
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------------------------------ timm interface

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        # A level's downsampler ends it (it feeds the next level): it sorts after the level's layers.
        return dict(
            stem=r"^patch_embed",
            blocks=r"^levels\.(\d+)"
            if coarse
            else [
                (r"^levels\.(\d+)\.downsample", (99998,)),
                (r"^levels\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # As the official training: timm's optimiser factory exempts 1-D parameters and biases only. The official
        # model names ``rpb`` in ``no_weight_decay_keywords`` (below), which timm never reads: rpb was decayed.
        return set()

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        """The official model's (Swin-style) keyword list; not read by timm's optimiser factory."""
        return {"rpb"}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        device = next(self.parameters()).device if any(True for _ in self.parameters()) else None
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()

    def _run(self, module: nn.Sequential, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(module, x)
        return module(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled, normalised features ``[N, ceil(H / 32), ceil(W / 32), num_features]`` (NHWC)."""
        x = self.pos_drop(self.patch_embed(check_images(x, self.in_chans)))
        for level in self.levels:
            x = self._run(level.blocks, x)
            if level.downsample is not None:
                x = level.downsample(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool over (H, W) of the NHWC features -> dropout -> classifier."""
        if self.global_pool == "avg":
            x = x.mean((1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Level outputs (after the layers, before the downsampler) as timm's ``forward_intermediates``:
        ``indices`` picks levels (an int n: the last n; None: all); ``stop_early`` stops after the last one taken;
        ``norm`` applies the final norm to the last level's output; ``output_fmt`` ``"NCHW"`` or ``"NHWC"``.
        Returns the intermediates, or (final features as ``forward_features``, intermediates)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        x = self.pos_drop(self.patch_embed(check_images(x, self.in_chans)))
        take_indices, max_index = feature_take_indices(self.num_levels, indices)
        last = self.num_levels - 1 if not stop_early else max_index
        intermediates = []
        for i, level in enumerate(self.levels):
            if i > last:
                break
            x = self._run(level.blocks, x)
            if i in take_indices:
                out = self.norm(x) if norm and i == self.num_levels - 1 else x
                intermediates.append(out.permute(0, 3, 1, 2) if output_fmt == "NCHW" else out)
            if level.downsample is not None and i < last:
                x = level.downsample(x)
        if intermediates_only:
            return intermediates
        if last == self.num_levels - 1:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the levels after the last of ``indices`` (and that level's downsampler); the final norm goes with
        any pruned level (it is sized for the last one) or with ``prune_norm``, the head with ``prune_head``."""
        take_indices, max_index = feature_take_indices(self.num_levels, indices)
        prune_end = max_index < self.num_levels - 1
        self.levels = self.levels[: max_index + 1]
        if prune_end:
            self.levels[-1].downsample = None
            self.num_levels = max_index + 1
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


# ---------------------------------------------------------------------------------------------- checkpoints


def checkpoint_filter_fn(state_dict: dict[str, Any], model: NAT) -> dict[str, Tensor]:
    """Adapt a checkpoint to ``model``: the official releases (a bare state dict in the model's layout) and
    training checkpoints that wrap one (``state_dict``, ``model``, ``model_ema``, ``state_dict_ema`` or ``module``,
    nested at most twice), with a ``module.`` prefix (DistributedDataParallel) stripped."""
    return unwrap_state_dict(state_dict)


# ---------------------------------------------------------------------------------------------- pretrained cfgs


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj.0",
        "classifier": "head",
        "license": "mit",
        "origin_url": "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer",
        **kwargs,
    }


# The official releases (bare state dicts), as the official classification/nat.py and dinat.py `model_urls` name
# them (the READMEs, classification/NAT.md and DiNAT.md, link the same files; DiNAT.md on the older
# shilab.cs.uoregon.edu host). The data settings are timm's defaults, which the official validate.py used.
_NAT = "https://shi-labs.com/projects/nat/checkpoints/CLS/"
_DINAT = "https://shi-labs.com/projects/dinat/checkpoints/"
_NAT_PAPER = dict(paper_ids="arXiv:2204.07143")
_DINAT_PAPER = dict(paper_ids="arXiv:2209.15001")
default_cfgs = generate_default_cfgs(
    {
        "nat_m.in1k": _cfg(_NAT + "nat_mini.pth", **_NAT_PAPER),
        "nat_t.in1k": _cfg(_NAT + "nat_tiny.pth", **_NAT_PAPER),
        "nat_s.in1k": _cfg(_NAT + "nat_small.pth", **_NAT_PAPER),
        "nat_b.in1k": _cfg(_NAT + "nat_base.pth", **_NAT_PAPER),
        "dinat_m.in1k": _cfg(_DINAT + "imagenet1k/dinat_mini_in1k_224.pth", **_DINAT_PAPER),
        "dinat_t.in1k": _cfg(_DINAT + "imagenet1k/dinat_tiny_in1k_224.pth", **_DINAT_PAPER),
        "dinat_s.in1k": _cfg(_DINAT + "imagenet1k/dinat_small_in1k_224.pth", **_DINAT_PAPER),
        "dinat_b.in1k": _cfg(_DINAT + "imagenet1k/dinat_base_in1k_224.pth", **_DINAT_PAPER),
        "dinat_l.in22k_ft_in1k": _cfg(_DINAT + "imagenet1k/dinat_large_in22k_in1k_224.pth", **_DINAT_PAPER),
        "dinat_l.in22k_ft_in1k_384": _cfg(
            _DINAT + "imagenet1k/dinat_large_in22k_in1k_384.pth",
            input_size=(3, 384, 384),
            pool_size=(12, 12),
            crop_pct=1.0,
            **_DINAT_PAPER,
        ),
        "dinat_l.in22k": _cfg(_DINAT + "imagenet22k/dinat_large_in22k_224.pth", num_classes=21841, **_DINAT_PAPER),
    }
)


def _create_nat(variant: str, pretrained: bool = False, **kwargs: Any) -> NAT:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    if kwargs.get("dilations") == "auto" and "img_size" not in kwargs:
        # DiNAT's dilations follow the input size: that of the pretrained tag asked for (384 for *_384)
        cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
        kwargs["img_size"] = tuple(cfg.input_size[-2:])
    return build_model_with_cfg(
        NAT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _args(
    embed_dim: int,
    depths: tuple[int, ...],
    num_heads: tuple[int, ...],
    mlp_ratio: float,
    kwargs: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    return dict(dict(embed_dim=embed_dim, depths=depths, num_heads=num_heads, mlp_ratio=mlp_ratio, **extra), **kwargs)


_MINI = (64, (3, 4, 6, 5), (2, 4, 8, 16), 3.0)
_TINY = (64, (3, 4, 18, 5), (2, 4, 8, 16), 3.0)
_SMALL = (96, (3, 4, 18, 5), (3, 6, 12, 24), 2.0)
_BASE = (128, (3, 4, 18, 5), (4, 8, 16, 32), 2.0)
_LARGE = (192, (3, 4, 18, 5), (6, 12, 24, 48), 2.0)


@register_model
def nat_m(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Mini: 64 dim, depths 3-4-6-5, heads 2-4-8-16, mlp ratio 3; 19,984,174 parameters."""
    return _create_nat("nat_m", pretrained, **_args(*_MINI, kwargs))


@register_model
def nat_t(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Tiny: 64 dim, depths 3-4-18-5, heads 2-4-8-16, mlp ratio 3; 27,901,582 parameters."""
    return _create_nat("nat_t", pretrained, **_args(*_TINY, kwargs))


@register_model
def nat_s(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Small: 96 dim, depths 3-4-18-5, heads 3-6-12-24, mlp ratio 2, layer scale 1e-5; 50,743,297 parameters."""
    return _create_nat("nat_s", pretrained, **_args(*_SMALL, kwargs, layer_scale=1e-5))


@register_model
def nat_b(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Base: 128 dim, depths 3-4-18-5, heads 4-8-16-32, mlp ratio 2, layer scale 1e-5; 89,769,652 parameters."""
    return _create_nat("nat_b", pretrained, **_args(*_BASE, kwargs, layer_scale=1e-5))


@register_model
def dinat_m(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Mini: NAT-Mini with DiNAT's dilations (1-8-1, 1-4-1-4, 1-2..., 1... at 224); 19,984,174 parameters."""
    return _create_nat("dinat_m", pretrained, **_args(*_MINI, kwargs, dilations="auto"))


@register_model
def dinat_t(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Tiny: NAT-Tiny with DiNAT's dilations; 27,901,582 parameters."""
    return _create_nat("dinat_t", pretrained, **_args(*_TINY, kwargs, dilations="auto"))


@register_model
def dinat_s(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Small: NAT-Small's shape with DiNAT's dilations and NO layer scale; 50,719,681 parameters."""
    return _create_nat("dinat_s", pretrained, **_args(*_SMALL, kwargs, dilations="auto"))


@register_model
def dinat_b(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Base: NAT-Base with DiNAT's dilations (layer scale 1e-5); 89,769,652 parameters."""
    return _create_nat("dinat_b", pretrained, **_args(*_BASE, kwargs, dilations="auto", layer_scale=1e-5))


@register_model
def dinat_l(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large: 192 dim, depths 3-4-18-5, heads 6-12-24-48, mlp ratio 2, no layer scale; 200,943,514
    parameters (``kernel_size=11``: the 11x11 variant, 201,144,250). ImageNet-22k pre-trained."""
    return _create_nat("dinat_l", pretrained, **_args(*_LARGE, kwargs, dilations="auto"))
