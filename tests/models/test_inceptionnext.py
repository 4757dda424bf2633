"""InceptionNeXt models: the variants, timm's key layout and parameter counts, timm's weights give timm's logits,
official and training checkpoints, backends, bad input, the training configs. The timm contract (creation,
forward/backward, heads, intermediates, features, gradient checkpointing, FX) is tests/models/test_contract.py's."""

from __future__ import annotations

import copy
import io
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import LayerNorm2d
from timm.models import get_notrace_functions, get_notrace_modules

import zoo
from tests.helpers import DEVICE, assert_close, count_parameters, images, randomise
from zoo.layers import InceptionDWConv2d
from zoo.models.inceptionnext import InceptionNeXt, check_images, checkpoint_filter_fn

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {  # name: (timm's name, depths, dims, parameters of the official model)
    "inceptionnext_a": ("inception_next_atto", (2, 2, 6, 2), (40, 80, 160, 320), 4_156_520),
    "inceptionnext_t": ("inception_next_tiny", (3, 3, 9, 3), (96, 192, 384, 768), 28_055_680),
    "inceptionnext_s": ("inception_next_small", (3, 3, 27, 3), (96, 192, 384, 768), 49_374_016),
    "inceptionnext_b": ("inception_next_base", (3, 3, 27, 3), (128, 256, 512, 1024), 86_672_136),
}


@pytest.fixture(scope="module")
def atto() -> InceptionNeXt:
    torch.manual_seed(0)
    return randomise(timm.create_model("inceptionnext_a", backend="torch"))


# ------------------------------------------------------------------------------------------------ variants


def test_variants_and_timms_own_names():
    assert zoo.list_models("inceptionnext_*") == sorted(VARIANTS)
    for timm_name, *_ in VARIANTS.values():
        assert timm.is_model(timm_name) and timm_name not in zoo.list_models()  # timm's own names stay timm's
    assert type(timm.create_model("inception_next_atto", device="meta")) is timm.models.inception_next.MetaNeXt
    assert timm.create_model("inceptionnext_b.sail_in1k_384", device="meta").pretrained_cfg["input_size"] == (
        3,
        384,
        384,
    )


def test_default_cfg_and_head_widths():
    model = timm.create_model("inceptionnext_a", device="meta")
    cfg = model.pretrained_cfg
    assert cfg["url"] == "https://github.com/sail-sg/inceptionnext/releases/download/model/inceptionnext_atto.pth"
    assert cfg["hf_hub_id"] == "timm/inception_next_atto.sail_in1k"
    assert cfg["input_size"] == (3, 224, 224) and cfg["num_classes"] == 1000 and cfg["pool_size"] == (7, 7)
    assert model.num_features == 320 and model.head_hidden_size == 960  # the MLP head: 3 x the last width
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]


# ------------------------------------------------------------------------------------------------ layout


@pytest.mark.parametrize("name", list(VARIANTS))
def test_keys_shapes_and_parameter_count_equal_timms(name):
    timm_name, depths, dims, parameters = VARIANTS[name]
    ours = timm.create_model(name, device="meta")
    reference = timm.create_model(timm_name, device="meta")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert count_parameters(ours) == parameters
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
    assert model(images(2, 32, channels=1)).shape == (2, 10)
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
    reference = randomise(timm.create_model(VARIANTS[name][0]))
    ours = timm.create_model(name, backend="torch").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = images(2)
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
    x = images()
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


# ------------------------------------------------------------------------------------------------ timm hooks


def test_mixers_and_the_input_check_are_fx_leaves():
    assert InceptionDWConv2d in get_notrace_modules() and check_images in get_notrace_functions()


def test_optimizer_hooks(atto):
    assert atto.no_weight_decay() == set()
    groups = atto.group_matcher()
    assert groups["stem"] == r"^stem" and "blocks" in groups
    assert atto.group_matcher(coarse=True)["blocks"] == r"^stages\.(\d+)"


# ------------------------------------------------------------------------------------------------ blocks


def test_blocks_residual_in_one_kernel_equals_timms_block_in_training():
    """Every block is an InceptionNeXtBlock (timm's MetaNeXtBlock, its layer-scaled residual one addcmul): in
    training with stochastic depth it drops the samples timm's block drops (same seed) and gives its outputs and
    every parameter's gradient; the model pickles whole."""
    from timm.models.inception_next import MetaNeXtBlock

    from zoo.models.inceptionnext import InceptionNeXtBlock

    torch.manual_seed(5)
    small = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), num_classes=5, drop_path_rate=0.5)
    ours = randomise(timm.create_model("inceptionnext_a", backend="torch", **small)).double().train()
    blocks = [block for stage in ours.stages for block in stage.blocks]
    assert all(type(block) is InceptionNeXtBlock for block in blocks)
    theirs = copy.deepcopy(ours)
    for stage in theirs.stages:
        for block in stage.blocks:
            block.__class__ = MetaNeXtBlock  # timm's own forward
    x = images(4, 32).double()
    results = []
    for model in (ours, theirs):
        torch.manual_seed(11)
        out = model(x)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
        results.append((out, grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    for got, want in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded.stages[0].blocks[0]) is InceptionNeXtBlock


# ------------------------------------------------------------------------------------------------ deployed form


def _expected_deployed_keys(training: dict[str, torch.Tensor]) -> set[str]:
    """The training form's keys less the folded norms' and layer scales', plus the biases the folds create."""
    folded = [k.rsplit(".", 1)[0] for k in training if k.endswith(".running_var")]
    kept = {k for k in training if not any(k.startswith(f"{norm}.") for norm in folded) and not k.endswith(".gamma")}
    return kept | {"stem.0.bias"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deployed_form_equals_the_training_form_in_eval(atto, dtype):
    """Every BN and layer scale folded (stem, downsampling, blocks); the logits and the stages' features agree in
    eval mode; the form is idempotent, its keys are the training form's less the folded ones, and a deploy=True
    model of the same variant takes its state dict strictly."""
    training = copy.deepcopy(atto).to(dtype)
    deployed = copy.deepcopy(training).reparameterize()
    assert deployed.deployed and not training.deployed
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    assert set(deployed.state_dict()) == _expected_deployed_keys(training.state_dict())
    x = images(2).to(dtype)
    tolerance = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        expected = training(x)
        assert expected.std() > 0.1  # the blocks matter: randomised statistics, affine terms and layer scales
        torch.testing.assert_close(deployed(x), expected, **tolerance)
        features = zip(deployed.forward_intermediates(x, intermediates_only=True),
                       training.forward_intermediates(x, intermediates_only=True), strict=True)  # fmt: skip
        for got, want in features:
            torch.testing.assert_close(got, want, **tolerance)
        state = {k: v.clone() for k, v in deployed.state_dict().items()}
        deployed.reparameterize()  # a no-op once deployed
        assert all(torch.equal(deployed.state_dict()[k], v) for k, v in state.items())
        fresh = timm.create_model("inceptionnext_a", backend="torch", deploy=True).to(dtype).eval()
        assert fresh.deployed and count_parameters(fresh) == count_parameters(deployed)
        fresh.load_state_dict(state, strict=True)
        torch.testing.assert_close(fresh(x), deployed(x), rtol=0, atol=0)


def test_deployed_form_without_layer_scale_or_conv_biases():
    """ls_init_value=0 (no gamma) and layers without biases: the folds create the biases they need."""
    torch.manual_seed(1)
    small = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), num_classes=5, ls_init_value=0)
    model = randomise(timm.create_model("inceptionnext_a", backend="torch", **small)).double()
    assert all(block.gamma is None for stage in model.stages for block in stage.blocks)
    model.stem[0].bias = None
    model.stages[1].downsample[1].bias = None
    model.stages[2].blocks[0].mlp.fc1.bias = None
    x = images(2, 32).double()
    with torch.no_grad():
        expected = model(x)
        model.reparameterize()
        assert model.stem[0].bias is not None and model.stages[2].blocks[0].mlp.fc1.bias is not None
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_deployed_parameter_counts(name):
    """Each BN (the stem's, three downsampling ones, one per block) takes 2 C parameters with it, each layer scale
    C: the deployed form has the official training form's count less those."""
    _, depths, dims, training = VARIANTS[name]
    folded = 2 * dims[0] + sum(2 * c for c in dims[:3]) + sum(3 * c * d for c, d in zip(dims, depths, strict=True))
    model = timm.create_model(name, device="meta", deploy=True)
    assert model.deployed and count_parameters(model) == training - folded


@pytest.mark.parametrize("wrap", ["official", "ddp"])
def test_training_checkpoint_loads_folded_into_a_deployed_model(tmp_path, atto, wrap):
    state = _official_checkpoint(atto)
    path = tmp_path / "inceptionnext_atto.pth"
    torch.save(state if wrap == "official" else {"model": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = timm.create_model(
        "inceptionnext_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), backend="torch", deploy=True
    ).eval()
    assert loaded.deployed
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), atto(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(loaded(x), copy.deepcopy(atto).reparameterize()(x), rtol=0, atol=0)
    # timm's feature extractor over the deployed form, from the same file, channels_last input
    features = timm.create_model(
        "inceptionnext_a",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        backend="torch",
        deploy=True,
        features_only=True,
    ).eval()
    x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = atto.forward_intermediates(x, intermediates_only=True)
        for got, want in zip(features(x), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_deployed_checkpoint_into_a_training_model_and_other_norms_are_clear_errors(atto):
    deployed_state = copy.deepcopy(atto).reparameterize().state_dict()
    with pytest.raises(ValueError, match="deployed .* form and the model in the training form: build the model with"):
        checkpoint_filter_fn(deployed_state, timm.create_model("inceptionnext_a", device="meta"))
    with pytest.raises(ValueError, match="batch norms with running statistics .* this model has .*LayerNorm2d"):
        timm.create_model("inceptionnext_a", norm_layer=LayerNorm2d, deploy=True, device="meta")
    other = timm.create_model("inceptionnext_a", norm_layer=LayerNorm2d, device="meta")
    with pytest.raises(ValueError, match="batch norms with running statistics"):
        other.reparameterize()
    assert not other.deployed and isinstance(other.stem[1], LayerNorm2d)  # left as it was
    no_running = timm.create_model(
        "inceptionnext_a", norm_layer=partial(torch.nn.BatchNorm2d, track_running_stats=False), device="meta"
    )
    with pytest.raises(ValueError, match=r"track_running_stats=True"):
        no_running.reparameterize()


def test_models_with_other_norms_load_their_own_checkpoints():
    """The filter's deployed-checkpoint check is about batch norms: a model built with another norm (no running
    statistics) loads its own state dict through it."""
    for norm_layer in (LayerNorm2d, partial(torch.nn.BatchNorm2d, track_running_stats=False)):
        model = timm.create_model("inceptionnext_a", norm_layer=norm_layer, device="meta")
        model.load_state_dict(checkpoint_filter_fn(dict(model.state_dict()), model), strict=True)


def test_reparameterize_folds_with_the_norms_as_they_are_now(atto):
    """An eps changed after construction is the one folded; the new modules follow the model's mode."""
    model = copy.deepcopy(atto).double()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 0.25
    x = images(1).double()
    with torch.no_grad():
        expected = model(x)
        model.reparameterize()
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)
    assert model.norm_eps == 0.25 and not any(m.training for m in model.modules())


# ------------------------------------------------------------------------------------------------ backends, input


def test_logits_equal_with_torch_and_triton_backends(monkeypatch):
    """A small InceptionNeXt (one block per stage) through the fused kernel (the interpreter on CPU)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the reference's convolutions in fp32 on a GPU
    torch.manual_seed(3)
    small = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), num_classes=10)
    reference = randomise(timm.create_model("inceptionnext_a", backend="torch", **small)).to(DEVICE)
    fused = timm.create_model("inceptionnext_a", backend="triton", **small).eval().to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    x = images(1, 32).to(DEVICE)
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
def test_model_configs_pass_no_image_size(variant):
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "configs" / "model" / f"inceptionnext_{variant}.yaml").read_text())
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
    """Digits at 8 px (the data's own size; the model's recipe picks 32) stops at once with the fix in the message;
    img_size=32 trains (one tiny epoch)."""
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
        train(_compose(*common, "img_size=8", f"run_dir={tmp_path / 'at8'}"))
    summary = train(_compose(*common, "img_size=32", f"run_dir={tmp_path / 'at32'}"))
    assert summary["epochs"] == 1 and 0 <= summary["final_top1"] <= 100
    rebuilt = timm.create_model(f"local-dir:{tmp_path / 'at32' / 'export'}", pretrained=True)
    assert isinstance(rebuilt, InceptionNeXt) and rebuilt.stem[0].in_channels == 1 and rebuilt.num_classes == 10
