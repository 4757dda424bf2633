"""UniRepLKNet: a universal perception large-kernel ConvNet (Ding, Zhang, Ge, Zhao, Song, Yue & Shan, CVPR 2024).

Registered with timm as ``unireplknet_a``, ``_f``, ``_p``, ``_n``, ``_t``, ``_s``, ``_b``, ``_l``, ``_xl`` (the
official names). The module layout and state-dict keys are those of the official ``unireplknet.py``
(AILab-CVC/UniRepLKNet): ``downsample_layers.{0..3}`` (stem: conv 3x3 s2 -> LN -> GELU -> conv 3x3 s2 -> LN;
then conv 3x3 s2 -> LN), ``stages.{i}.{j}`` (:class:`zoo.layers.UniRepLKNetBlock`), ``norm`` (LayerNorm on the
pooled features) and ``head``. Both forms of the released checkpoints load strictly: the training form
(Dilated Reparam Blocks with their batch norms) into a default model, the deployed form into ``deploy=True``
(and a training-form checkpoint into a ``deploy=True`` model, converted on the way by
:func:`checkpoint_filter_fn`). ``timm.utils.reparameterize_model(model)`` (or ``model.reparameterize()``) turns a
trained model into the deployed form with equal eval-mode outputs.

Unlike the official model, ``forward_features`` is unpooled ([N, C, H/32, W/32]); pooling, the final LayerNorm and
the classifier live in ``forward_head``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm2d, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs
from torch import Tensor, nn

from zoo._timm import feature_take_indices
from zoo.layers.unireplknet import DilatedReparamBlock, UniRepLKNetBlock
from zoo.models._checkpoint import unwrap_state_dict
from zoo.models._registry import register_model

__all__ = [
    "UniRepLKNet",
    "checkpoint_filter_fn",
    "default_kernel_sizes",
    "unireplknet_a",
    "unireplknet_b",
    "unireplknet_f",
    "unireplknet_l",
    "unireplknet_n",
    "unireplknet_p",
    "unireplknet_s",
    "unireplknet_t",
    "unireplknet_xl",
]


def default_kernel_sizes(depths: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The official kernel sizes per block: stage 1 all 3, stages 2 and 4 all 13; stage 3 all 13 for up to 8
    blocks (A, F, P, N), (13, 3) repeated for 18 blocks (T), (13, 3, 3) repeated otherwise (S, B, L, XL)."""
    if len(depths) != 4:
        raise ValueError(f"UniRepLKNet has 4 stages, got depths={depths!r}")
    d3 = depths[2]
    if d3 <= 8:
        stage3 = (13,) * d3
    elif d3 == 18:
        stage3 = (13, 3) * 9
    else:
        stage3 = tuple((13, 3, 3)[j % 3] for j in range(d3))
    return (3,) * depths[0], (13,) * depths[1], stage3, (13,) * depths[3]


@register_notrace_function  # a leaf for torch.fx: it branches on shapes
def check_images(x: Tensor, in_chans: int) -> Tensor:
    """Return ``x`` if it is an image batch ``[N, in_chans, H, W]``; else raise ValueError."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"UniRepLKNet expects images [N, C, H, W] (NCHW or channels_last) with C = in_chans = {in_chans}, "
            f"got shape {list(x.shape)}"
        )
    return x


class UniRepLKNet(nn.Module):
    """UniRepLKNet for image classification, with timm's interface.

    Args:
        in_chans: input channels.
        num_classes: classes (0: no classifier, ``forward`` returns the normalised pooled features).
        depths: blocks per stage.
        dims: channels per stage.
        kernel_sizes: kernel size of every block (one tuple per stage); None: the official defaults
            (:func:`default_kernel_sizes`).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linear from 0 to this over the blocks.
        layer_scale_init_value: initial layer scale (None or 0: none).
        head_init_scale: factor on the classifier's initial weight and bias (0.001 in the official fine-tuning).
        deploy: build the deployed (re-parameterised) form.
        global_pool: ``"avg"`` or ``""`` (no pooling: ``forward_head`` returns NCHW, normalised over channels).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` for every depthwise convolution.
        ffn_factor: MLP width in units of the block width (4).
        merge_branches: when each Dilated Reparam Block runs as one merged convolution: ``"eval"`` (running
            statistics), ``"always"`` (also in training: fewer passes, more host-side ops; for compiled or
            CUDA-graph training) or ``"never"`` (zoo/layers/dilated_reparam.py).
        device, dtype: where and in which dtype to build the parameters (``device="meta"`` builds no storage).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: tuple[int, ...] = (3, 3, 27, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        kernel_sizes: tuple[tuple[int, ...], ...] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        head_init_scale: float = 1.0,
        deploy: bool = False,
        global_pool: str = "avg",
        backend: str = "auto",
        ffn_factor: int = 4,
        merge_branches: str = "eval",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        depths, dims = tuple(int(d) for d in depths), tuple(int(d) for d in dims)
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"UniRepLKNet has 4 stages: got depths={depths!r}, dims={dims!r}")
        if kernel_sizes is None:
            kernel_sizes = default_kernel_sizes(depths)
        kernel_sizes = tuple(tuple(int(k) for k in stage) for stage in kernel_sizes)
        if [len(k) for k in kernel_sizes] != list(depths):
            raise ValueError(f"kernel_sizes {kernel_sizes!r} do not match depths {depths!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.depths, self.dims, self.kernel_sizes = depths, dims, kernel_sizes
        self.deploy = deploy
        self.backend = backend
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

        with torch.device(device) if device is not None else nullcontext():
            stem = nn.Sequential(
                nn.Conv2d(in_chans, dims[0] // 2, kernel_size=3, stride=2, padding=1),
                LayerNorm2d(dims[0] // 2, eps=1e-6),
                nn.GELU(),
                nn.Conv2d(dims[0] // 2, dims[0], kernel_size=3, stride=2, padding=1),
                LayerNorm2d(dims[0], eps=1e-6),
            )
            self.downsample_layers = nn.ModuleList([stem])
            for i in range(3):
                self.downsample_layers.append(
                    nn.Sequential(
                        nn.Conv2d(dims[i], dims[i + 1], kernel_size=3, stride=2, padding=1),
                        LayerNorm2d(dims[i + 1], eps=1e-6),
                    )
                )
            rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
            self.stages = nn.ModuleList()
            self.feature_info = []
            cursor = 0
            for i in range(4):
                blocks = [
                    UniRepLKNetBlock(
                        dims[i],
                        kernel_sizes[i][j],
                        drop_path=rates[cursor + j],
                        layer_scale_init_value=layer_scale_init_value,
                        deploy=deploy,
                        backend=backend,
                        ffn_factor=ffn_factor,
                        merge_branches=merge_branches,
                    )
                    for j in range(depths[i])
                ]
                self.stages.append(nn.Sequential(*blocks))
                cursor += depths[i]
                self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2**i, module=f"stages.{i}"))
            self.norm: nn.Module = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head_drop = nn.Dropout(drop_rate)
            self.head: nn.Module = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
            self.apply(self._init_weights)
            if isinstance(self.head, nn.Linear):
                with torch.no_grad():
                    self.head.weight.mul_(head_init_scale)
                    self.head.bias.mul_(head_init_scale)
        if dtype is not None:
            self.to(dtype)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """The official init: trunc-normal std 0.02 for every conv and linear weight, zero biases."""
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------------------------------ re-parameterisation

    @property
    def deployed(self) -> bool:
        """True when every block is in the inference form."""
        return all(block.deployed for stage in self.stages for block in stage)

    def reparameterize(self) -> UniRepLKNet:
        """Switch every block to the deployed form in place (idempotent); equal eval-mode outputs.
        ``timm.utils.reparameterize_model(model)`` does the same on a copy."""
        for module in self.modules():
            if isinstance(module, (UniRepLKNetBlock, DilatedReparamBlock)):
                module.reparameterize()
        self.deploy = True
        return self

    # ------------------------------------------------------------------------------------------ timm interface

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^downsample_layers\.0",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^downsample_layers\.(\d+)", (0,)),
                (r"^stages\.(\d+)\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # As the official optimiser factory: 1-D parameters and biases get no weight decay (timm's default rule);
        # nothing else is exempt (GRN's [1, 1, 1, C] gamma and beta decay, as in the official training).
        return set()

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

    def _check(self, x: Tensor) -> Tensor:
        """The validated images, channels_last: each block's NHWC MLP hands the next a channels_last map anyway,
        so an NCHW input is converted once here instead of mixing layouts in the first stage (CPU inference at
        batch 8: about 3% less time; a no-op for channels_last input, as the GPU benchmarks feed)."""
        return check_images(x, self.in_chans).contiguous(memory_format=torch.channels_last)

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled features ``[N, num_features, ceil(H / 32), ceil(W / 32)]``."""
        x = self._check(x)
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = downsample(x)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool over (H, W) -> LayerNorm -> dropout -> classifier."""
        if self.global_pool == "avg":
            x = self.norm(x.mean((2, 3)))
        else:  # unpooled: the LayerNorm over the channels of every position
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
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
        """Stage outputs (NCHW) as timm's ``forward_intermediates``: ``indices`` picks stages (an int n: the last n;
        None: all); ``stop_early`` stops after the last one taken; ``norm`` has no effect (the model's only final
        norm acts on pooled features). Returns the intermediates, or (final features, intermediates)."""
        if output_fmt != "NCHW":
            raise ValueError(f"UniRepLKNet's intermediates are NCHW only, got output_fmt={output_fmt!r}")
        x = self._check(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        last = len(self.stages) - 1 if not stop_early else max_index
        for i, (downsample, stage) in enumerate(zip(self.downsample_layers, self.stages, strict=True)):
            if i > last:
                break
            x = downsample(x)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the head: the final norm acts on pooled features of
        the last stage, so it goes with the head or with any pruned stage)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        self.downsample_layers = self.downsample_layers[: max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or prune_end or prune_head:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


# ---------------------------------------------------------------------------------------------- checkpoints


def _is_training_form(state_dict: dict[str, Tensor]) -> bool:
    return any(k.startswith("stages.") and (k.endswith(".norm.running_var") or ".pwconv2.2." in k) for k in state_dict)


@torch.no_grad()
def _deploy_state_dict(state_dict: dict[str, Tensor], model: UniRepLKNet) -> dict[str, Tensor]:
    """Convert a training-form state dict to the deployed form of ``model`` block by block (fp32 arithmetic)."""
    out = {k: v for k, v in state_dict.items() if not k.startswith("stages.")}
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            prefix = f"stages.{i}.{j}."
            sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            dtype = next(iter(sub.values())).dtype if sub else torch.float32
            layer_scale = 1.0 if "gamma" in sub else None
            trained = UniRepLKNetBlock(
                block.dim, block.kernel_size, layer_scale_init_value=layer_scale, device="cpu", dtype=torch.float32
            )
            trained.load_state_dict({k: v.float().cpu() for k, v in sub.items()}, strict=True)
            trained.reparameterize()
            out.update({prefix + k: v.to(dtype) for k, v in trained.state_dict().items()})
    return out


def checkpoint_filter_fn(state_dict: dict[str, Any], model: UniRepLKNet) -> dict[str, Tensor]:
    """Adapt a checkpoint to ``model``: the official releases (training form), deployed checkpoints, ours.

    Unwraps a training checkpoint (``state_dict``, ``model``, ``model_ema``, ``state_dict_ema`` or ``module``) and
    strips a ``module.`` prefix (DistributedDataParallel). A training-form checkpoint loads into a training-form
    model as it is, and into a ``deploy=True`` model after block-by-block re-parameterisation; a deployed
    checkpoint loads into a ``deploy=True`` model (and cannot go back to the training form: a clear error).
    """
    state_dict = unwrap_state_dict(state_dict)
    training_checkpoint = _is_training_form(state_dict)
    model_deployed = getattr(model, "deployed", False)
    if training_checkpoint and model_deployed:
        return _deploy_state_dict(state_dict, model)
    if not training_checkpoint and not model_deployed and any(k.startswith("stages.") for k in state_dict):
        raise ValueError(
            "this checkpoint is in UniRepLKNet's deployed (re-parameterised) form and the model in the training "
            "form: build the model with deploy=True to load it (the branches and batch norms cannot be recovered)"
        )
    return state_dict


# ---------------------------------------------------------------------------------------------- pretrained cfgs


def _cfg(file: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": _OFFICIAL + file if file else "",
        "hf_hub_id": "DingXiaoH/UniRepLKNet" if file else None,
        "hf_hub_filename": file or None,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "downsample_layers.0.0",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2311.15599",
        "origin_url": "https://github.com/AILab-CVC/UniRepLKNet",
        **kwargs,
    }


# The official releases, all in the training form (huggingface.co/DingXiaoH/UniRepLKNet; file names from the
# official unireplknet.py `huggingface_file_names`). The official README lists the ImageNet-22k UniRepLKNet-S and
# the 22k -> 1k UniRepLKNet-XL as lost ("reproducing"); their entries are kept as the official code names them.
_OFFICIAL = "https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/"
_IN22K = dict(num_classes=21841)
_FT384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0, crop_mode="squash")
default_cfgs = generate_default_cfgs(
    {
        "unireplknet_a.in1k": _cfg("unireplknet_a_in1k_224_acc77.03.pth"),
        "unireplknet_f.in1k": _cfg("unireplknet_f_in1k_224_acc78.58.pth"),
        "unireplknet_p.in1k": _cfg("unireplknet_p_in1k_224_acc80.23.pth"),
        "unireplknet_n.in1k": _cfg("unireplknet_n_in1k_224_acc81.64.pth"),
        "unireplknet_t.in1k": _cfg("unireplknet_t_in1k_224_acc83.21.pth"),
        "unireplknet_s.in1k": _cfg("unireplknet_s_in1k_224_acc83.91.pth"),
        "unireplknet_s.in22k_ft_in1k_384": _cfg("unireplknet_s_in22k_to_in1k_384_acc86.44.pth", **_FT384),
        "unireplknet_s.in22k": _cfg("unireplknet_s_in22k_pretrain.pth", **_IN22K),
        "unireplknet_b.in22k_ft_in1k_384": _cfg("unireplknet_b_in22k_to_in1k_384_acc87.40.pth", **_FT384),
        "unireplknet_b.in22k": _cfg("unireplknet_b_in22k_pretrain.pth", **_IN22K),
        "unireplknet_l.in22k_ft_in1k_384": _cfg("unireplknet_l_in22k_to_in1k_384_acc87.88.pth", **_FT384),
        "unireplknet_l.in22k": _cfg(
            "unireplknet_l_in22k_pretrain.pth", input_size=(3, 192, 192), pool_size=(6, 6), **_IN22K
        ),
        "unireplknet_xl.in22k_ft_in1k_384": _cfg("unireplknet_xl_in22k_to_in1k_384_acc87.96.pth", **_FT384),
        "unireplknet_xl.in22k": _cfg(
            "unireplknet_xl_in22k_pretrain.pth", input_size=(3, 192, 192), pool_size=(6, 6), **_IN22K
        ),
    }
)


def _create_unireplknet(variant: str, pretrained: bool = False, **kwargs: Any) -> UniRepLKNet:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        UniRepLKNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _args(depths: tuple[int, ...], dims: tuple[int, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(dict(depths=depths, dims=dims), **kwargs)


@register_model
def unireplknet_a(pretrained: bool = False, **kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-A: depths 2-2-6-2, dims 40-80-160-320; 4,649,060 parameters (deployed 4,437,300)."""
    return _create_unireplknet("unireplknet_a", pretrained, **_args((2, 2, 6, 2), (40, 80, 160, 320), kwargs))


@register_model
def unireplknet_f(pretrained: bool = False, **kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-F: depths 2-2-6-2, dims 48-96-192-384; 6,489,328 parameters (deployed 6,235,216)."""
    return _create_unireplknet("unireplknet_f", pretrained, **_args((2, 2, 6, 2), (48, 96, 192, 384), kwargs))


@register_model
def unireplknet_p(pretrained: bool = False, **kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-P: depths 2-2-6-2, dims 64-128-256-512; 11,080,520 parameters (deployed 10,741,704)."""
    return _create_unireplknet("unireplknet_p", pretrained, **_args((2, 2, 6, 2), (64, 128, 256, 512), kwargs))


@register_model
def unireplknet_n(pretrained: bool = False, **kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-N: depths 2-2-8-2, dims 80-160-320-640; 18,818,880 parameters (deployed 18,318,560)."""
    return _create_unireplknet("unireplknet_n", pretrained, **_args((2, 2, 8, 2), (80, 160, 320, 640), kwargs))


@register_model
def unireplknet_t(pretrained: bool = False, **kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-T: depths 3-3-18-3, dims 80-160-320-640; 31,693,420 parameters (deployed 31,037,980)."""
    return _create_unireplknet("unireplknet_t", pretrained, **_args((3, 3, 18, 3), (80, 160, 320, 640), kwargs))


@register_model
def unireplknet_s(pretrained: bool = False, **kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-S: depths 3-3-27-3, dims 96-192-384-768; 56,456,704 parameters (deployed 55,645,984)."""
    return _create_unireplknet("unireplknet_s", pretrained, **_args((3, 3, 27, 3), (96, 192, 384, 768), kwargs))


@register_model
def unireplknet_b(pretrained: bool = False, **kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-B: depths 3-3-27-3, dims 128-256-512-1024; 99,089,416 parameters (deployed 98,008,456)."""
    return _create_unireplknet("unireplknet_b", pretrained, **_args((3, 3, 27, 3), (128, 256, 512, 1024), kwargs))


@register_model
def unireplknet_l(pretrained: bool = False, **kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-L: depths 3-3-27-3, dims 192-384-768-1536; 220,076,056 parameters (deployed 218,454,616)."""
    return _create_unireplknet("unireplknet_l", pretrained, **_args((3, 3, 27, 3), (192, 384, 768, 1536), kwargs))


@register_model
def unireplknet_xl(pretrained: bool = False, **kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-XL: depths 3-3-27-3, dims 256-512-1024-2048; 388,690,984 parameters (deployed 386,529,064)."""
    return _create_unireplknet("unireplknet_xl", pretrained, **_args((3, 3, 27, 3), (256, 512, 1024, 2048), kwargs))
