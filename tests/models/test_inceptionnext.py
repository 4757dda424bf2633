"""InceptionNeXt models: timm's key layout and parameter counts, timm's weights give timm's logits, official and
training checkpoints, the timm contract (the equivalents of timm's tests/test_models.py, minus TorchScript and
downloads), backends, bad input, the training configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules

import zoo
from tests.helpers import DEVICE, assert_close
from tests.models.contract import outputs_and_grads, trace_model
from zoo.layers import InceptionDWConv2d
from zoo.models.inceptionnext import InceptionNeXt, check_images, checkpoint_filter_fn

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {  # name: (timm's name, depths, dims, parameters of the official model)
    "inceptionnext_a": ("inception_next_atto", (2, 2, 6, 2), (40, 80, 160, 320), 4_156_520),
    "inceptionnext_t": ("inception_next_tiny", (3, 3, 9, 3), (96, 192, 384, 768), 28_055_680),
    "inceptionnext_s": ("inception_next_small", (3, 3, 27, 3), (96, 192, 384, 768), 49_374_016),
    "inceptionnext_b": ("inception_next_base", (3, 3, 27, 3), (128, 256, 512, 1024), 86_672_136),
}
SIZE = 64  # input side for the small forward passes: 2x2 after the last stage


def _input(batch: int = 1, size: int = SIZE, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial layer scales (init 1e-6 would hide the blocks) and batch-norm statistics and affine terms."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            module.weight.copy_(0.5 + torch.rand(c, generator=generator))
            module.bias.copy_(0.1 * torch.randn(c, generator=generator))
        if getattr(module, "gamma", None) is not None:
            module.gamma.copy_(0.2 + 0.3 * torch.rand(module.gamma.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def atto() -> InceptionNeXt:
    torch.manual_seed(0)
    return _randomise(timm.create_model("inceptionnext_a", backend="torch"))


# ------------------------------------------------------------------------------------------------ registry


def test_registered_with_timm_and_the_zoo():
    assert zoo.list_models("inceptionnext_*") == sorted(VARIANTS)
    for name, (timm_name, *_) in VARIANTS.items():
        assert timm.is_model(name) and timm.is_model(timm_name)  # timm's own names stay timm's
        assert isinstance(zoo.create_model(name, device="meta"), InceptionNeXt)
    assert type(timm.create_model("inception_next_atto", device="meta")) is timm.models.inception_next.MetaNeXt
    assert timm.create_model("inceptionnext_b.sail_in1k_384", device="meta").pretrained_cfg["input_size"] == (
        3,
        384,
        384,
    )


# ------------------------------------------------------------------------------------------------ layout


@pytest.mark.parametrize("name", list(VARIANTS))
def test_keys_shapes_and_parameter_count_equal_timms(name):
    timm_name, depths, dims, parameters = VARIANTS[name]
    ours = timm.create_model(name, device="meta")
    reference = timm.create_model(timm_name, device="meta")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == parameters
    assert [len(stage.blocks) for stage in ours.stages] == list(depths)
    assert [info["num_chs"] for info in ours.feature_info] == list(dims)
    mixers = [m for m in ours.modules() if isinstance(m, InceptionDWConv2d)]
    assert len(mixers) == sum(depths)
    assert {m.band_kernel_size for m in mixers} == {9 if name == "inceptionnext_a" else 11}


def test_official_key_names(atto):
    keys = set(atto.state_dict())
    for key in [
        "stem.0.weight",
        "stem.1.running_var",
        "stages.1.downsample.0.weight",
        "stages.1.downsample.1.bias",
        "stages.2.blocks.5.token_mixer.dwconv_hw.weight",
        "stages.2.blocks.5.token_mixer.dwconv_w.bias",
        "stages.2.blocks.5.token_mixer.dwconv_h.weight",
        "stages.0.blocks.0.norm.weight",
        "stages.0.blocks.0.mlp.fc1.weight",
        "stages.0.blocks.0.mlp.fc2.bias",
        "stages.3.blocks.1.gamma",
        "head.fc1.weight",
        "head.norm.weight",
        "head.fc2.bias",
    ]:
        assert key in keys, key
    assert "stages.0.downsample.0.weight" not in keys  # stage 0 has no downsampling


def test_constructor_arguments():
    model = timm.create_model("inceptionnext_a", num_classes=10, in_chans=1, drop_path_rate=0.1, backend="torch")
    assert model.stem[0].weight.shape == (40, 1, 4, 4)
    assert model(_input(2, 32, channels=1)).shape == (2, 10)
    assert model.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    mixers = [m for m in model.modules() if isinstance(m, InceptionDWConv2d)]
    assert {m.backend for m in mixers} == {"torch"}
    assert {
        m.backend
        for m in timm.create_model("inceptionnext_t", device="meta").modules()
        if isinstance(m, InceptionDWConv2d)
    } == {"auto"}
    # lists from a config (OmegaConf ListConfig, plain lists) work like tuples
    small = timm.create_model("inceptionnext_a", depths=[1, 1, 1, 1], dims=[16, 32, 64, 128], device="meta")
    assert [len(s.blocks) for s in small.stages] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="supports only dilation=1"):
        timm.create_model("inceptionnext_a", output_stride=16, device="meta")
    with pytest.raises(TypeError, match="builds its own token mixers"):
        InceptionNeXt(token_mixers=torch.nn.Identity)


# ------------------------------------------------------------------------------------------------ timm's weights


@pytest.mark.parametrize("name", ["inceptionnext_a", "inceptionnext_t"])
def test_timms_weights_load_strictly_and_give_timms_logits(name):
    torch.manual_seed(0)
    reference = _randomise(timm.create_model(VARIANTS[name][0]))
    ours = timm.create_model(name, backend="torch").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = _input(2)
    with torch.no_grad():
        expected = reference(x)
        assert expected.std() > 0.1  # the blocks matter: the layer scales are not ~0
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.forward_features(x), reference.forward_features(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ checkpoints


def _official_checkpoint(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The sail-sg releases are bare state dicts of the official MetaNeXt (its keys are timm's and ours)."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_model(loaded: torch.nn.Module, expected: torch.nn.Module) -> None:
    loaded.eval()
    for key, value in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected(x), rtol=0, atol=0)


@pytest.mark.parametrize("wrap", ["official", "state_dict", "model", "model_ema", "ddp"])
def test_offline_pretrained_file_loads_strictly(tmp_path, atto, wrap):
    state = _official_checkpoint(atto)
    checkpoint = {
        "official": state,
        "state_dict": {"state_dict": state, "epoch": 299},
        "model": {"model": state, "optimizer": {}},
        "model_ema": {"model_ema": state},
        "ddp": {"model": {f"module.{k}": v for k, v in state.items()}},
    }[wrap]
    path = tmp_path / "inceptionnext_atto.pth"
    torch.save(checkpoint, path)
    loaded = timm.create_model(
        "inceptionnext_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), backend="torch"
    )
    _assert_same_model(loaded, atto)


def test_checkpoint_filter_keeps_official_keys_for_strict_loading(atto):
    fresh = timm.create_model("inceptionnext_a")
    state = _official_checkpoint(atto)
    filtered = checkpoint_filter_fn(state, fresh)
    assert set(filtered) == set(state)
    fresh.load_state_dict(filtered, strict=True)


def test_pretrained_file_with_other_classes_and_channels(tmp_path, atto):
    path = tmp_path / "inceptionnext_atto.pth"
    torch.save(_official_checkpoint(atto), path)
    model = timm.create_model(
        "inceptionnext_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=10, in_chans=1
    )
    assert model.head.fc2.weight.shape == (10, 960)  # the classifier is left at init
    assert model.stem[0].weight.shape == (40, 1, 4, 4)  # timm sums the first conv over the input channels
    torch.testing.assert_close(model.stem[0].weight, atto.stem[0].weight.sum(1, keepdim=True))
    assert torch.equal(
        model.stages[2].blocks[3].token_mixer.dwconv_w.weight, atto.stages[2].blocks[3].token_mixer.dwconv_w.weight
    )


# ------------------------------------------------------------------------------------------------ timm contract


def test_forward_backward_reach_every_parameter():
    model = timm.create_model("inceptionnext_a", num_classes=42).train()
    out = model(_input(2))
    out.mean().backward()
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_default_cfg_and_heads(atto):
    cfg = atto.pretrained_cfg
    assert cfg["url"] == "https://github.com/sail-sg/inceptionnext/releases/download/model/inceptionnext_atto.pth"
    assert cfg["hf_hub_id"] == "timm/inception_next_atto.sail_in1k"
    assert cfg["input_size"] == (3, 224, 224) and cfg["num_classes"] == 1000 and cfg["pool_size"] == (7, 7)
    state = atto.state_dict()
    assert cfg["classifier"] + ".weight" in state and cfg["first_conv"] + ".weight" in state
    model = timm.create_model("inceptionnext_a").eval()
    x = _input(1, 96)
    with torch.no_grad():
        features = model.forward_features(x)  # unpooled
        assert features.shape == (1, 320, 3, 3) and model.num_features == 320
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size) == (1, 960)
        model.reset_classifier(0)
        assert model.num_classes == 0
        torch.testing.assert_close(model(x), pre_logits)
        model.reset_classifier(7)
        assert model(x).shape == (1, 7) and model.get_classifier().out_features == 7
        headless = timm.create_model("inceptionnext_a", num_classes=0).eval()
        assert headless(x).shape == (1, 960)
        assert not any(k.startswith("head.fc2") for k in headless.state_dict())


def test_features_only():
    model = timm.create_model("inceptionnext_a", features_only=True).eval()
    assert model.feature_info.channels() == [40, 80, 160, 320]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outputs = model(_input(2, 96))
    assert [tuple(o.shape) for o in outputs] == [(2, 40, 24, 24), (2, 80, 12, 12), (2, 160, 6, 6), (2, 320, 3, 3)]
    picked = timm.create_model("inceptionnext_a", features_only=True, out_indices=(1, 3))
    assert picked.feature_info.channels() == [80, 320]


def test_forward_intermediates_match_forward_features(atto):
    x = _input(2, 96)
    with torch.no_grad():
        final, intermediates = atto.forward_intermediates(x)
        assert [tuple(t.shape) for t in intermediates] == [
            (2, 40, 24, 24),
            (2, 80, 12, 12),
            (2, 160, 6, 6),
            (2, 320, 3, 3),
        ]
        torch.testing.assert_close(final, atto.forward_features(x), rtol=0, atol=0)
        only = atto.forward_intermediates(x, indices=[1, 2], intermediates_only=True, stop_early=True)
    assert [tuple(t.shape) for t in only] == [(2, 80, 12, 12), (2, 160, 6, 6)]
    torch.testing.assert_close(only[1], intermediates[2])


def test_gradient_checkpointing_gives_equal_outputs_and_gradients():
    torch.manual_seed(0)
    model = _randomise(timm.create_model("inceptionnext_a", backend="torch")).train()  # batch statistics
    x = _input(2)

    out, grads = outputs_and_grads(model, x)
    model.set_grad_checkpointing()
    assert all(stage.grad_checkpointing for stage in model.stages)
    out_checkpointed, grads_checkpointed = outputs_and_grads(model, x)
    torch.testing.assert_close(out_checkpointed, out, rtol=1e-5, atol=1e-6)
    for g_checkpointed, g in zip(grads_checkpointed, grads, strict=True):
        torch.testing.assert_close(g_checkpointed, g, rtol=1e-4, atol=1e-6)


def test_fx_forward_equals_eager(atto):
    assert InceptionDWConv2d in get_notrace_modules() and check_images in get_notrace_functions()
    fx_model, node = trace_model(atto, train=False)
    x = _input()
    with torch.no_grad():
        assert torch.equal(fx_model(x)[node], atto(x))


def test_fx_backward_reaches_every_parameter():
    model = timm.create_model("inceptionnext_a", num_classes=42).train()
    fx_model, node = trace_model(model, train=True)
    out = fx_model(_input(2))[node]
    out.mean().backward()
    assert out.shape == (2, 42)
    assert all(p.grad is not None for p in model.parameters())


def test_optimizer_hooks(atto):
    assert atto.no_weight_decay() == set()
    groups = atto.group_matcher()
    assert groups["stem"] == r"^stem" and "blocks" in groups
    assert atto.group_matcher(coarse=True)["blocks"] == r"^stages\.(\d+)"


# ------------------------------------------------------------------------------------------------ backends, input


def test_logits_equal_with_torch_and_triton_backends(monkeypatch):
    """A small InceptionNeXt (one block per stage) through the fused kernel (the interpreter on CPU)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the reference's convolutions in fp32 on a GPU
    torch.manual_seed(3)
    small = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), num_classes=10)
    reference = _randomise(timm.create_model("inceptionnext_a", backend="torch", **small)).to(DEVICE)
    fused = timm.create_model("inceptionnext_a", backend="triton", **small).eval().to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    x = _input(1, 32).to(DEVICE)
    with torch.no_grad():
        expected = reference(x)
        assert expected.std() > 0.1
        assert_close(fused(x), expected, torch.float32, scale=10.0)


def test_bad_input_names_the_expected_layout(atto):
    with pytest.raises(ValueError, match=r"expects images \[N, C, H, W\] .* in_chans = 3, got shape \[3, 64, 64\]"):
        atto(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"in_chans = 3, got shape \[1, 1, 64, 64\]"):
        atto(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"downsamples by 32: images must be at least 32x32, got 31x64"):
        atto.forward_features(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match="at least 32x32, got 8x8"):
        atto.forward_intermediates(torch.randn(1, 3, 8, 8))
    with torch.no_grad():
        assert atto(torch.randn(1, 3, 32, 45)).shape == (1, 1000)  # 32 px is enough; sides need not divide by 32


# ------------------------------------------------------------------------------------------------ configs, training


@pytest.mark.parametrize("variant", ["a", "t", "s", "b"])
def test_model_configs_name_their_model(variant):
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "configs" / "model" / f"inceptionnext_{variant}.yaml").read_text())
    assert config["name"] == f"inceptionnext_{variant}" and timm.is_model(config["name"])
    assert config["data_args"] == ["in_chans", "num_classes"]  # MetaNeXt takes no image size


def _compose(*overrides: str):
    pytest.importorskip("hydra")  # the entry points' dependency (absent on the GPU machine)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("variant,drop_path", [("a", 0.1), ("t", 0.1), ("s", 0.3), ("b", 0.4)])
def test_imagenet_recipe_composes(variant, drop_path):
    """The paper's recipe (official README and scripts) overrides the defaults; the command line overrides it."""
    cfg = _compose(f"model=inceptionnext_{variant}", "experiment=inceptionnext_imagenet", "run_dir=x")
    assert (cfg.data.name, cfg.data.img_size, cfg.epochs, cfg.batch_size, cfg.accum_steps) == (
        "imagenet",
        224,
        300,
        128,
        4,
    )
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 4e-3, 0.05)
    assert (cfg.sched.name, cfg.sched.warmup_epochs, cfg.sched.warmup_lr, cfg.sched.min_lr) == (
        "cosine",
        20,
        1e-6,
        1e-5,
    )
    assert (cfg.mixup.mixup_alpha, cfg.mixup.cutmix_alpha, cfg.mixup.label_smoothing) == (0.8, 1.0, 0.1)
    assert cfg.data.augment == {
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "re_prob": 0.25,
        "re_mode": "pixel",
        "interpolation": "random",
    }
    assert not cfg.ema.enabled
    assert cfg.model.kwargs.drop_path_rate == drop_path
    overridden = _compose(
        f"model=inceptionnext_{variant}",
        "experiment=inceptionnext_imagenet",
        "run_dir=x",
        "model.kwargs.drop_path_rate=0.2",
        "optim.lr=1e-3",
    )
    assert (overridden.model.kwargs.drop_path_rate, overridden.optim.lr) == (0.2, 1e-3)


def test_training_on_digits_needs_img_size_32(tmp_path):
    """The 8 px digits default stops at once with the fix in the message; img_size=32 trains (one tiny epoch)."""
    pytest.importorskip("hydra")
    from zoo.training.trainer import train

    common = [
        "model=inceptionnext_a",
        "data.train_subset=128",
        "data.eval_subset=64",
        "batch_size=32",
        "epochs=1",
        "progress=false",
        "device=cpu",
        "sched.warmup_epochs=0",
    ]
    with pytest.raises(ValueError, match="at least 32x32, got 8x8.*img_size=32"):
        train(_compose(*common, f"run_dir={tmp_path / 'at8'}"))
    summary = train(_compose(*common, "img_size=32", f"run_dir={tmp_path / 'at32'}"))
    assert summary["epochs"] == 1 and 0 <= summary["final_top1"] <= 100
    rebuilt = timm.create_model(f"local-dir:{tmp_path / 'at32' / 'export'}", pretrained=True)
    assert isinstance(rebuilt, InceptionNeXt) and rebuilt.stem[0].in_channels == 1 and rebuilt.num_classes == 10
