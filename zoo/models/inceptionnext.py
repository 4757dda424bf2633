"""InceptionNeXt: When Inception Meets ConvNeXt (Yu, Zhou, Yan & Wang, CVPR 2024), with a fused token mixer.

Registered with timm as ``inceptionnext_a``, ``inceptionnext_t``, ``inceptionnext_s``, ``inceptionnext_b`` (the
official ``inceptionnext_{atto,tiny,small,base}``; timm's own ports are ``inception_next_*``, which the zoo leaves
alone). The model is timm's ``MetaNeXt`` (stem 4x4 stride 4 + BN; stages of MetaNeXt blocks, each stage after the
first opening with BN + 2x2 stride-2 conv; MLP head) whose token mixers are :class:`zoo.layers.InceptionDWConv2d`,
one fused op per block instead of split / three convolutions / concatenate. State-dict keys equal timm's and the
official checkpoints' (``stem.{0,1}``, ``stages.{i}.downsample.{0,1}``,
``stages.{i}.blocks.{j}.{token_mixer.dwconv_{hw,w,h},norm,mlp.fc1,mlp.fc2,gamma}``, ``head.{fc1,norm,fc2}``), so
timm's and the official weights load with ``strict=True``, and timm's MetaNeXt machinery (``forward_intermediates``,
``features_only``, gradient checkpointing, ``reset_classifier``, ``group_matcher``) applies unchanged.

The deployed form (:meth:`InceptionNeXt.reparameterize`, or ``deploy=True`` to build it) folds every batch norm and
layer scale into a neighbouring convolution: the stem's BN into the stem convolution, each downsampling BN into the
2x2 convolution after it, each block's BN (after the mixer) into ``mlp.fc1`` and its ``gamma`` into ``mlp.fc2``.
Equal to the training form in eval mode, it runs two elementwise kernels fewer per block in inference (the norm's
and the scale's: four passes over the block's activations); its state dict is the training form's without the BN
and ``gamma`` keys.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.inception_next import MetaNeXt, MetaNeXtBlock
from torch import Tensor, nn

from zoo.layers._fused_modules import scaled_residual
from zoo.layers.batch_norm_fold import batch_norm_affine, fold_after, fold_before
from zoo.layers.inception import InceptionDWConv2d
from zoo.models._checkpoint import unwrap_state_dict
from zoo.models._registry import register_model

__all__ = [
    "InceptionNeXt",
    "InceptionNeXtBlock",
    "checkpoint_filter_fn",
    "deploy_state_dict",
    "inceptionnext_a",
    "inceptionnext_b",
    "inceptionnext_s",
    "inceptionnext_t",
]


@register_notrace_function  # a leaf for torch.fx: it branches on shapes
def check_images(x: Tensor, in_chans: int, min_size: int) -> Tensor:
    """Return ``x`` if it is an image batch ``[N, in_chans, H, W]`` with H, W >= ``min_size``; else raise ValueError.

    InceptionNeXt downsamples by 32 (stem /4, three stages /2): below 32 px the last downsampling convolution
    has no input position left, and PyTorch's own error would not say why.
    """
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"InceptionNeXt expects images [N, C, H, W] (NCHW or channels_last) with C = in_chans = {in_chans}, "
            f"got shape {list(x.shape)}"
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"InceptionNeXt downsamples by {min_size}: images must be at least {min_size}x{min_size}, got "
            f"{x.shape[2]}x{x.shape[3]} (shape {list(x.shape)}). Resize the data: for the 8 px digits add img_size=32 "
            f"to the train.py command line"
        )
    return x


class InceptionNeXtBlock(MetaNeXtBlock):
    """timm's ``MetaNeXtBlock`` (the same modules, parameters and keys) whose layer-scaled residual
    ``shortcut + drop_path(gamma * mlp(norm(mixer(x))))`` is one kernel
    (:func:`zoo.layers._fused_modules.scaled_residual`: four passes fewer forward, two backward). timm's stages build
    ``MetaNeXtBlock`` s; :class:`InceptionNeXt` makes each one of these (it adds no state, only this forward;
    docs/design.md §25)."""

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.mlp(self.norm(self.token_mixer(x)))
        if self.gamma is None:
            return self.drop_path(x) + shortcut
        return scaled_residual(shortcut, self.gamma.reshape(1, -1, 1, 1), x, self.drop_path)


class InceptionNeXt(MetaNeXt):
    """timm's ``MetaNeXt`` with the fused :class:`zoo.layers.InceptionDWConv2d` as every token mixer.

    Args:
        square_kernel_size: side of the mixers' square branch (3).
        band_kernel_size: length of the band branches (11; 9 for atto).
        branch_ratio: fraction of the channels per convolution branch (0.125; 0.25 for atto).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` for every mixer.
        deploy: build the deployed form (module docstring; :meth:`reparameterize`), e.g. to load a deployed
            checkpoint, or a training checkpoint folded on loading (:func:`checkpoint_filter_fn`).
        **kwargs: timm ``MetaNeXt`` arguments (``in_chans``, ``num_classes``, ``depths``, ``dims``,
            ``mlp_ratios``, ``drop_rate``, ``drop_path_rate``, ``ls_init_value``, ``global_pool``, ``device``,
            ``dtype``, ...). ``output_stride`` must stay 32: the fused mixer has no dilation. MetaNeXt takes no
            image size: any input of at least 32x32 works.
    """

    def __init__(
        self,
        square_kernel_size: int = 3,
        band_kernel_size: int = 11,
        branch_ratio: float = 0.125,
        backend: str = "auto",
        deploy: bool = False,
        **kwargs: Any,
    ) -> None:
        if "token_mixers" in kwargs:
            raise TypeError(
                "InceptionNeXt builds its own token mixers (InceptionDWConv2d); token_mixers cannot be given"
            )
        for key in ("depths", "dims", "mlp_ratios"):  # lists from a config (e.g. OmegaConf's) -> tuples
            if key in kwargs and not isinstance(kwargs[key], (int, float, tuple)):
                kwargs[key] = tuple(kwargs[key])
        token_mixer = partial(
            InceptionDWConv2d,
            square_kernel_size=square_kernel_size,
            band_kernel_size=band_kernel_size,
            branch_ratio=branch_ratio,
            backend=backend,
        )
        super().__init__(token_mixers=token_mixer, **kwargs)
        for stage in self.stages:
            for block in stage.blocks:
                if type(block) is MetaNeXtBlock:
                    block.__class__ = InceptionNeXtBlock  # timm's block with the one-kernel residual (no new state)
        self.backend = backend
        if self.num_classes == 0 and not isinstance(self.head.fc2, nn.Identity):
            self.head.fc2 = nn.Identity()  # timm 1.0.29 builds a Linear(hidden, 0) for num_classes=0
        # the batch norms' common eps, with which a deploy=True model folds training checkpoints (deploy_state_dict)
        self.norm_eps = self._batch_norm_eps()
        if deploy:
            self._deploy_modules()

    # ------------------------------------------------------------------------------------------ deployed form

    def _folded_norms(self) -> list[nn.Module]:
        """The norms the deployed form folds: the stem's, the downsampling layers', the blocks'."""
        norms = [self.stem[1]]
        for stage in self.stages:
            if isinstance(stage.downsample, nn.Sequential):
                norms.append(stage.downsample[0])
            norms += [block.norm for block in stage.blocks]
        return norms

    @property
    def deployed(self) -> bool:
        """True in the deployed form: no batch norm and no layer scale left to fold."""
        return all(isinstance(norm, nn.Identity) for norm in self._folded_norms()) and all(
            block.gamma is None for stage in self.stages for block in stage.blocks
        )

    def _batch_norm_eps(self) -> float | None:
        """The eps of the norms the deployed form folds, where they can be folded (batch norms with running
        statistics, one eps); else None."""
        norms = self._folded_norms()
        if not all(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None for m in norms):
            return None
        eps = {m.eps for m in norms}
        return eps.pop() if len(eps) == 1 else None

    def _foldable_eps(self) -> float:
        """:meth:`_batch_norm_eps` of the norms as they are now, or a ValueError saying why they cannot be folded."""
        eps = self._batch_norm_eps()
        if eps is None:
            norms = self._folded_norms()
            kinds = sorted({type(m).__name__ for m in norms})
            eps_values = sorted({str(getattr(m, "eps", None)) for m in norms})
            raise ValueError(
                "InceptionNeXt's deployed form folds its norms into the convolutions beside them, which needs batch "
                f"norms with running statistics (track_running_stats=True) and one eps; this model has {kinds} with "
                f"eps {eps_values}"
            )
        return eps

    def _deploy_modules(self) -> None:
        """Turn the modules into the deployed form's (weights not folded): the folded norms become identities, the
        layer scales go, and the convolutions that absorb them gain a bias where they have none."""
        self._foldable_eps()

        def identity() -> nn.Identity:
            return nn.Identity().train(self.training)

        self.stem[1] = identity()
        convs = [self.stem[0]]
        for stage in self.stages:
            if isinstance(stage.downsample, nn.Sequential):
                stage.downsample[0] = identity()
                convs.append(stage.downsample[1])
            for block in stage.blocks:
                block.norm = identity()
                block.gamma = None
                convs += [block.mlp.fc1, block.mlp.fc2]
        for conv in convs:
            if conv.bias is None:
                bias = conv.weight.new_zeros(conv.out_channels)
                conv.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)

    @torch.no_grad()
    def reparameterize(self) -> InceptionNeXt:
        """Switch to the deployed form in place (module docstring; idempotent); equal eval-mode outputs, up to
        rounding. Returns the model."""
        if self.deployed:
            return self
        self.norm_eps = self._foldable_eps()  # the norms as they are now (their eps may have been changed)
        folded = deploy_state_dict(self.state_dict(), self.norm_eps)
        self._deploy_modules()
        self.load_state_dict(folded, strict=True)
        return self

    def _check(self, x: Tensor) -> Tensor:
        min_size = self.feature_info[len(self.stages) - 1]["reduction"]
        return check_images(x, self.stem[0].in_channels, min_size)

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled features ``[N, num_features, H / 32, W / 32]``."""
        return super().forward_features(self._check(x))

    def forward_intermediates(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """timm's ``forward_intermediates`` (NCHW stage outputs), with the input checked first."""
        return super().forward_intermediates(self._check(x), *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        # Defined here (not inherited) so that torch.fx, tracing from this module's globals, keeps
        # ``check_images`` as a leaf call.
        return self.forward_head(self.forward_features(x))


def deploy_state_dict(state_dict: dict[str, Tensor], eps: float) -> dict[str, Tensor]:
    """The deployed form's state dict (module docstring) from a training-form one whose batch norms have ``eps``:
    each norm and layer scale folded into its convolution (zoo/layers/batch_norm_fold.py) in float64, rounded to
    the convolution's dtype; every other entry as it is."""
    out = dict(state_dict)

    def norm(prefix: str) -> tuple[Tensor, Tensor]:
        parts = [out.pop(f"{prefix}.{name}", None) for name in ("running_mean", "running_var", "weight", "bias")]
        out.pop(f"{prefix}.num_batches_tracked", None)
        mean, var, weight, bias = (None if t is None else t.double() for t in parts)
        return batch_norm_affine(mean, var, weight, bias, eps)

    def fold(conv: str, fold_fn, scale: Tensor, shift: Tensor) -> None:
        weight = out[f"{conv}.weight"]
        bias = out.get(f"{conv}.bias")
        folded_weight, folded_bias = fold_fn(weight.double(), None if bias is None else bias.double(), scale, shift)
        out[f"{conv}.weight"], out[f"{conv}.bias"] = folded_weight.to(weight.dtype), folded_bias.to(weight.dtype)

    fold("stem.0", fold_after, *norm("stem.1"))
    for key in [k for k in state_dict if k.endswith(".downsample.0.running_var")]:
        stage = key[: -len(".downsample.0.running_var")]
        fold(f"{stage}.downsample.1", fold_before, *norm(f"{stage}.downsample.0"))
    for key in [k for k in state_dict if k.endswith(".norm.running_var") and ".blocks." in k]:
        block = key[: -len(".norm.running_var")]  # the BN after the mixer
        fold(f"{block}.mlp.fc1", fold_before, *norm(f"{block}.norm"))
        gamma = out.pop(f"{block}.gamma", None)
        if gamma is not None:
            fold(f"{block}.mlp.fc2", fold_after, gamma.double(), torch.zeros_like(gamma, dtype=torch.float64))
    return out


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapt a checkpoint to ``model``: timm's ``inception_next_*`` weights, the official sail-sg releases, ours.

    timm's ports and the official checkpoints (bare state dicts saved from the official ``MetaNeXt``) already
    carry exactly this model's keys. This unwraps a training checkpoint and strips a ``module.`` prefix
    (:func:`zoo.models._checkpoint.unwrap_state_dict`). A training-form checkpoint loads into a ``deploy=True``
    model folded (:func:`deploy_state_dict`); a deployed one cannot go back to the training form (a clear error).
    """
    state_dict = unwrap_state_dict(state_dict)
    model_deployed = getattr(model, "deployed", False)
    if model_deployed and "stem.1.running_var" in state_dict:  # a training-form checkpoint with batch norms
        return deploy_state_dict(state_dict, model.norm_eps)
    norm_keys = [k for k in model.state_dict() if k.startswith("stem.1.")]  # the model's stem norm's, if any
    if norm_keys and "stem.0.weight" in state_dict and not any(k in state_dict for k in norm_keys):
        raise ValueError(
            "this checkpoint is in InceptionNeXt's deployed (re-parameterised) form and the model in the training "
            "form: build the model with deploy=True to load it (the batch norms cannot be recovered)"
        )
    return state_dict


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
        "first_conv": "stem.0",
        "classifier": "head.fc2",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2303.16900",
        "origin_url": "https://github.com/sail-sg/inceptionnext",
        **kwargs,
    }


# The official releases (top-1 75.3 / 82.3 / 83.5 / 84.0 / 85.2 at 384). With huggingface_hub installed timm
# fetches its ports of the same weights (hf_hub_id, safetensors), else the official GitHub release (url).
_OFFICIAL = "https://github.com/sail-sg/inceptionnext/releases/download/model/"
default_cfgs = generate_default_cfgs(
    {
        "inceptionnext_a.sail_in1k": _cfg(
            url=_OFFICIAL + "inceptionnext_atto.pth", hf_hub_id="timm/inception_next_atto.sail_in1k"
        ),
        "inceptionnext_t.sail_in1k": _cfg(
            url=_OFFICIAL + "inceptionnext_tiny.pth", hf_hub_id="timm/inception_next_tiny.sail_in1k"
        ),
        "inceptionnext_s.sail_in1k": _cfg(
            url=_OFFICIAL + "inceptionnext_small.pth", hf_hub_id="timm/inception_next_small.sail_in1k"
        ),
        "inceptionnext_b.sail_in1k": _cfg(
            url=_OFFICIAL + "inceptionnext_base.pth", hf_hub_id="timm/inception_next_base.sail_in1k", crop_pct=0.95
        ),
        "inceptionnext_b.sail_in1k_384": _cfg(
            url=_OFFICIAL + "inceptionnext_base_384.pth",
            hf_hub_id="timm/inception_next_base.sail_in1k_384",
            input_size=(3, 384, 384),
            pool_size=(12, 12),
            crop_pct=1.0,
        ),
    }
)


def _create_inceptionnext(variant: str, pretrained: bool = False, **kwargs: Any) -> InceptionNeXt:
    return build_model_with_cfg(
        InceptionNeXt,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


@register_model
def inceptionnext_a(pretrained: bool = False, **kwargs: Any) -> InceptionNeXt:
    """InceptionNeXt-atto: depths 2-2-6-2, dims 40-80-160-320, band 9, branch ratio 1/4; 4,156,520 parameters."""
    args = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), band_kernel_size=9, branch_ratio=0.25)
    return _create_inceptionnext("inceptionnext_a", pretrained, **dict(args, **kwargs))


@register_model
def inceptionnext_t(pretrained: bool = False, **kwargs: Any) -> InceptionNeXt:
    """InceptionNeXt-T: depths 3-3-9-3, dims 96-192-384-768; 28,055,680 parameters."""
    args = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
    return _create_inceptionnext("inceptionnext_t", pretrained, **dict(args, **kwargs))


@register_model
def inceptionnext_s(pretrained: bool = False, **kwargs: Any) -> InceptionNeXt:
    """InceptionNeXt-S: depths 3-3-27-3, dims 96-192-384-768; 49,374,016 parameters."""
    args = dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
    return _create_inceptionnext("inceptionnext_s", pretrained, **dict(args, **kwargs))


@register_model
def inceptionnext_b(pretrained: bool = False, **kwargs: Any) -> InceptionNeXt:
    """InceptionNeXt-B: depths 3-3-27-3, dims 128-256-512-1024; 86,672,136 parameters."""
    args = dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
    return _create_inceptionnext("inceptionnext_b", pretrained, **dict(args, **kwargs))
