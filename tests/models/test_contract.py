"""The model contract, over every registered model: the equivalent of timm's tests/test_models.py (minus TorchScript
and downloads) for each name in ``zoo.list_models()``.

Full-size models are built only on the meta device (creation, pretrained config: no storage, no init cost); the
behaviour runs on a tiny member of the model's family (``FAMILIES``: the family tests' reduced widths and depths)
on a tiny input (``KINDS``). ``KINDS`` is the one table of which checks apply to which kind of model: a check a kind
does not offer is asserted to be refused, never skipped. A registered model that no row of ``FAMILIES`` matches
fails every test here with a message that says so: a new family gets the suite by registering and adding one row.

The family files (test_kat.py, ...) keep only their family's own facts: official key layouts and parameter counts,
checkpoints, re-parameterisation, dilation rules, sequence modes, comparisons with the official references.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import yaml

import zoo
from tests.helpers import randomise
from tests.models.contract import module_calls, outputs_and_grads, trace_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
NAMES = zoo.list_models()
NUM_CLASSES = 7  # the tiny models' classes: no family's default


@dataclass(frozen=True)
class Kind:
    """What the contract asks of one kind of model (False: the model must refuse it, and the test asserts that).

    Every kind gets: creation through timm.create_model and zoo.create_model, its pretrained_cfg and
    configs/model/<name>.yaml; forward and backward with a finite gradient for every parameter; forward_features,
    forward_head(pre_logits=True), reset_classifier and num_classes=0; gradient checkpointing equal to none; torch.fx
    tracing equal to eager in eval and train mode.
    """

    input_shape: tuple[int, ...]  # the tiny input, batch first
    forward_intermediates: bool  # forward_intermediates and feature_info; False: the model has neither
    features_only: bool  # create_model(features_only=True); False: it raises RuntimeError


KINDS = {
    "image": Kind(input_shape=(2, 3, 32, 32), forward_intermediates=True, features_only=True),
    "sequence": Kind(input_shape=(2, 16, 3), forward_intermediates=False, features_only=False),
}


@dataclass(frozen=True)
class Family:
    """One model family: its kind, the layout of its ``forward_features`` and the arguments of its tiny members."""

    kind: str
    layout: str  # "NCHW", "NHWC", or "NLC" (tokens; a ViT's prefix tokens first, then the patches row by row)
    tiny: dict[str, Any] = field(default_factory=dict)


# Two layers in the first levels: DiNAT's second layers there dilate by 8 and 4 (its rule at 224 px), windows wider
# than the tiny maps (the padded attention).
_NAT_TINY = dict(embed_dim=16, depths=(2, 2, 1, 1), num_heads=(1, 1, 2, 4), backend="torch")
FAMILIES = {  # name pattern (fnmatch): family
    "kat_*": Family(
        "image", "NLC", dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, backend="torch")
    ),
    "inceptionnext_*": Family("image", "NCHW", dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), backend="torch")),
    "unireplknet_*": Family(
        "image",
        "NCHW",
        dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_sizes=((3,), (7,), (5,), (3,)), backend="torch"),
    ),
    "nat_*": Family("image", "NHWC", _NAT_TINY),
    "dinat_*": Family("image", "NHWC", _NAT_TINY),
    "s4d_*": Family("sequence", "NLC", dict(d_model=16, n_layers=2, d_state=8, backend="torch")),
    "longconv_*": Family("sequence", "NLC", dict(d_model=16, n_layers=2, l_max=32, backend="torch")),
}

# Values for the data-derived arguments a training config names (``data_args``), as the training code passes them.
DATA_ARGUMENTS = dict(img_size=32, patch_size=8, in_chans=1, num_classes=5, vocab_size=11)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def family(name: str) -> Family:
    rows = [pattern for pattern in FAMILIES if fnmatch.fnmatchcase(name, pattern)]
    if not rows:
        pytest.fail(
            f"{name!r} is registered (zoo.list_models()) but no row of FAMILIES in {__file__} matches it: add one "
            f"(its kind, the layout of its forward_features, tiny constructor arguments) to give it the model contract"
        )
    if len(rows) > 1:
        pytest.fail(f"{name!r} matches several rows of FAMILIES ({rows}): make the patterns disjoint")
    row = FAMILIES[rows[0]]
    if row.kind not in KINDS:
        pytest.fail(f"FAMILIES[{rows[0]!r}] names the kind {row.kind!r}; KINDS has {sorted(KINDS)}")
    return row


def kind(name: str) -> Kind:
    return KINDS[family(name).kind]


def full_size(name: str, **kwargs: Any) -> torch.nn.Module:
    """The registered model itself, through zoo.create_model, on the meta device."""
    with torch.device("meta"):
        return zoo.create_model(name, **kwargs)


def tiny(name: str, seed: int = 0, **kwargs: Any) -> torch.nn.Module:
    """A tiny member of the model's family through timm.create_model, seeded, randomised (see
    ``tests.helpers.randomise``), in eval mode. Equal seeds and arguments give equal weights."""
    torch.manual_seed(seed)
    return randomise(timm.create_model(name, **family(name).tiny, **kwargs), seed)


def tiny_input(name: str, seed: int = 1) -> torch.Tensor:
    return torch.randn(kind(name).input_shape, generator=torch.Generator().manual_seed(seed))


def assert_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def flatten(final_and_intermediates: tuple[torch.Tensor, list[torch.Tensor]]) -> list[torch.Tensor]:
    """``forward_intermediates``' (final, [intermediates]) as one list."""
    final, intermediates = final_and_intermediates
    return [final, *intermediates]


def named_failures(model: torch.nn.Module, grads: list[torch.Tensor | None]) -> tuple[list[str], list[str]]:
    """The names of the parameters without a gradient, and of those with a non-finite one."""
    names = [n for n, _ in model.named_parameters()]
    missing = [n for n, g in zip(names, grads, strict=True) if g is None]
    non_finite = [n for n, g in zip(names, grads, strict=True) if g is not None and not torch.isfinite(g).all()]
    return missing, non_finite


# ------------------------------------------------------------------------------------------------ the tables


def test_every_row_of_the_tables_is_used():
    """No stale rows: every family pattern matches a registered model, every kind has a family."""
    for pattern, row in FAMILIES.items():
        assert fnmatch.filter(NAMES, pattern), f"FAMILIES[{pattern!r}] matches no registered model"
        assert row.kind in KINDS and row.layout in ("NCHW", "NHWC", "NLC"), (pattern, row)
    assert {row.kind for row in FAMILIES.values()} == set(KINDS)


def test_every_model_config_names_a_registered_model():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert {path.stem for path in paths} >= set(NAMES)
    for path in paths:
        assert yaml.safe_load(path.read_text())["name"] == path.stem and timm.is_model(path.stem), path


# ------------------------------------------------------------------------------------------------ registry


def test_the_zoo_lists_its_models_sorted_and_filtered():
    assert NAMES == sorted(NAMES) and len(NAMES) == len(set(NAMES))
    assert zoo.list_models("kat_[ts]") == ["kat_s", "kat_t"]
    assert "resnet50" not in NAMES and timm.is_model("resnet50")  # timm's own models are not the zoo's
    assert all(timm.is_model(name) for name in NAMES)


def test_a_pretrained_tag_names_its_config():
    for tag in ("kat_t.in1k", "unireplknet_b.in22k_ft_in1k_384", "dinat_l.in22k"):
        architecture, pretrained_tag = tag.split(".")
        model = zoo.create_model(tag, device="meta")
        assert type(model).__module__ == timm.models.model_entrypoint(architecture).__module__
        cfg = model.pretrained_cfg
        assert (cfg["architecture"], cfg["tag"]) == (architecture, pretrained_tag)
        assert cfg["input_size"] == timm.models.get_pretrained_cfg(tag).input_size
        assert model.num_classes == cfg["num_classes"] == timm.models.get_pretrained_cfg(tag).num_classes


def test_unknown_name_lists_the_closest_names():
    with pytest.raises(ValueError, match=r"unknown model 'kat_tiny'; closest names: .*kat_t"):
        zoo.create_model("kat_tiny")


def test_zoo_never_overwrites_a_timm_name():
    from zoo.models import register_model

    def vit_tiny_patch16_224(pretrained=False, **kwargs):  # a name timm owns
        raise AssertionError("never called")

    with pytest.raises(RuntimeError, match="timm already has a model named 'vit_tiny_patch16_224'"):
        register_model(vit_tiny_patch16_224)


# ------------------------------------------------------------------------------------------------ creation


@pytest.mark.parametrize("name", NAMES)
def test_creation_pretrained_cfg_and_training_config(name):
    row = family(name)
    entrypoint = timm.models.model_entrypoint(name)
    assert entrypoint.__module__.startswith("zoo.models.")
    model = full_size(name)
    assert all(p.is_meta for p in model.parameters())  # nothing materialised: the full size costs nothing
    assert type(model).__module__ == entrypoint.__module__  # the family's class (timm's own ports stay timm's)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name
    state = model.state_dict()
    assert model.get_classifier() is model.get_submodule(cfg["classifier"])
    assert state[cfg["classifier"] + ".weight"].shape[0] == cfg["num_classes"] == model.num_classes
    assert state[cfg["first_conv"] + ".weight"].shape[1] == cfg["input_size"][0] == len(cfg["mean"]) == len(cfg["std"])

    path = CONFIGS / f"{name}.yaml"
    assert path.is_file(), f"{name} has no training config: add {path} (see the others in {CONFIGS})"
    config = yaml.safe_load(path.read_text())
    assert config["name"] == name
    data = {arg: DATA_ARGUMENTS[arg] for arg in config["data_args"]}
    configured = timm.create_model(name, **{**row.tiny, **config["kwargs"], **data})
    assert type(configured) is type(model) and configured.num_classes == DATA_ARGUMENTS["num_classes"]
    assert configured.pretrained_cfg["architecture"] == name


# ------------------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_gives_every_parameter_a_finite_gradient(name):
    model = tiny(name, num_classes=NUM_CLASSES).train()
    x = tiny_input(name)
    (out,), grads = outputs_and_grads(lambda: model(x), model.parameters())
    assert out.shape == (x.shape[0], NUM_CLASSES) and torch.isfinite(out).all()
    missing, non_finite = named_failures(model, grads)
    assert not missing, f"parameters without a gradient: {missing}"
    assert not non_finite, f"parameters with a non-finite gradient: {non_finite}"


@pytest.mark.parametrize("name", NAMES)
def test_forward_features_and_forward_head(name):
    layout = family(name).layout
    model = tiny(name, num_classes=NUM_CLASSES)
    x = tiny_input(name)
    with torch.no_grad():
        features = model.forward_features(x)  # unpooled
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model(x)
        assert_equal(model.forward_head(features), logits)
        assert_equal(model.get_classifier()(pre_logits), logits)
    assert features.ndim == len(layout) and features.shape[0] == x.shape[0]
    assert features.shape[layout.index("C")] == model.num_features
    assert pre_logits.shape == (x.shape[0], model.head_hidden_size) and torch.isfinite(pre_logits).all()
    assert logits.shape == (x.shape[0], NUM_CLASSES)


@pytest.mark.parametrize("name", NAMES)
def test_reset_classifier_and_no_classifier(name):
    model = tiny(name, num_classes=NUM_CLASSES)
    x = tiny_input(name)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert_equal(model(x), pre_logits)
        model.reset_classifier(3)
        assert model.num_classes == 3 and model(x).shape == (x.shape[0], 3)
        headless = timm.create_model(name, num_classes=0, **family(name).tiny).eval()
        assert headless.num_classes == 0
        # it has exactly the model's keys less the classifier's, and with the model's weights gives its pre-logits
        classifier = headless.pretrained_cfg["classifier"] + "."
        state = {
            k: v for k, v in tiny(name, num_classes=NUM_CLASSES).state_dict().items() if not k.startswith(classifier)
        }
        headless.load_state_dict(state, strict=True)
        assert_equal(headless(x), pre_logits)


# ------------------------------------------------------------------------------------------------ features


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_equal_forward_features_and_follow_feature_info(name):
    model = tiny(name)
    if not kind(name).forward_intermediates:
        assert not hasattr(model, "forward_intermediates") and not hasattr(model, "feature_info")
        return
    layout = family(name).layout
    x = tiny_input(name)
    batch, size = x.shape[0], x.shape[-1]
    info = model.feature_info
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        features = model.forward_features(x)
        assert_equal(final, features)
        assert len(intermediates) == len(info)
        for out, stage in zip(intermediates, info, strict=True):
            side = math.ceil(size / stage["reduction"])
            assert out.shape == (batch, stage["num_chs"], side, side), (stage, out.shape)
        n, channels, h, w = intermediates[-1].shape
        expected = {
            "NCHW": (n, channels, h, w),
            "NHWC": (n, h, w, channels),
            "NLC": (n, getattr(model, "num_prefix_tokens", 0) + h * w, channels),
        }[layout]
        assert features.shape == expected  # the last map's shape in the layout of forward_features
        first_and_last = model.forward_intermediates(x, indices=[0, len(info) - 1], intermediates_only=True)
        assert len(first_and_last) == 2
        assert_equal(first_and_last[0], intermediates[0])
        assert_equal(first_and_last[1], intermediates[-1])
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last_two) == 2
        for got, want in zip(last_two, intermediates[-2:], strict=True):
            assert_equal(got, want)
        early = model.forward_intermediates(x, indices=[0], intermediates_only=True, stop_early=True)
        assert len(early) == 1
        assert_equal(early[0], intermediates[0])


@pytest.mark.parametrize("name", NAMES)
def test_features_only_gives_the_intermediates(name, tmp_path):
    """``features_only=True`` (its default and picked ``out_indices``) with the weights of a model, loaded as timm
    loads a pretrained file, gives that model's intermediates, with the channels and reductions of feature_info."""
    if not kind(name).features_only:
        with pytest.raises(RuntimeError, match="features_only"):
            timm.create_model(name, features_only=True, **family(name).tiny)
        return
    x = tiny_input(name)
    size = x.shape[-1]
    model = tiny(name)
    weights = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), weights)
    last = len(model.feature_info) - 1
    with torch.no_grad():
        intermediates = model.forward_intermediates(x, intermediates_only=True)
        for out_indices in (None, (1, last)):
            picked = {} if out_indices is None else dict(out_indices=out_indices)
            extractor = timm.create_model(
                name,
                features_only=True,
                pretrained=True,
                pretrained_cfg_overlay=dict(file=str(weights)),
                **family(name).tiny,
                **picked,
            ).eval()
            indices = extractor.feature_info.out_indices
            assert out_indices is None or tuple(indices) == out_indices
            maps = extractor(x)
            assert len(maps) == len(indices) == len(extractor.feature_info.channels())
            for out, index, channels, reduction in zip(
                maps, indices, extractor.feature_info.channels(), extractor.feature_info.reduction(), strict=True
            ):
                assert channels == model.feature_info[index]["num_chs"]
                assert out.shape[1:] == (channels, math.ceil(size / reduction), math.ceil(size / reduction))
                assert_equal(out, intermediates[index])


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_equals_none(name):
    """Outputs and gradients equal those without checkpointing (in train mode: batch statistics, dropout), and
    blocks run again during backward (checkpointing is on). The same for forward_intermediates."""
    model = tiny(name, num_classes=NUM_CLASSES).train()
    x = tiny_input(name)
    runs = {"forward": lambda: model(x)}
    if kind(name).forward_intermediates:
        runs["forward_intermediates"] = lambda: flatten(model.forward_intermediates(x))
    for label, run in runs.items():
        model.set_grad_checkpointing(False)
        calls, (out, grads) = module_calls(lambda run=run: outputs_and_grads(run, model.parameters()))
        model.set_grad_checkpointing(True)
        calls_checkpointed, (out_checkpointed, grads_checkpointed) = module_calls(
            lambda run=run: outputs_and_grads(run, model.parameters())
        )
        assert calls_checkpointed > calls, f"{label}: set_grad_checkpointing recomputes nothing"
        for got, want in zip(out_checkpointed, out, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for (n, _), got, want in zip(model.named_parameters(), grads_checkpointed, grads, strict=True):
            assert (got is None) == (want is None), f"{label}: {n} has a gradient in one run only"
            if want is not None:
                torch.testing.assert_close(
                    got, want, rtol=1e-4, atol=1e-6, msg=lambda m, n=n, label=label: f"{label} {n}: {m}"
                )


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_equals_eager(name):
    """torch.fx tracing as timm's feature extraction does it: equal outputs in eval mode; equal outputs and
    gradients of every parameter in train mode."""
    model = tiny(name, num_classes=NUM_CLASSES)
    x = tiny_input(name)
    traced, node = trace_model(model, train=False)
    with torch.no_grad():
        assert_equal(traced(x)[node], model(x))
    model.train()
    traced, node = trace_model(model, train=True)
    (out,), grads = outputs_and_grads(lambda: traced(x)[node], model.parameters())
    (expected,), expected_grads = outputs_and_grads(lambda: model(x), model.parameters())
    assert_equal(out, expected)
    missing, non_finite = named_failures(model, grads)
    assert not missing and not non_finite, (missing, non_finite)
    for (n, _), got, want in zip(model.named_parameters(), grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")
