"""Export to timm's local-dir layout: `timm.create_model("local-dir:DIR", pretrained=True)` rebuilds the model."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import timm
import torch

import zoo  # noqa: F401  (registers the KAT models with timm)
from zoo.models.kat import KAT
from zoo.training import export_model


def _rebuild(out_dir) -> torch.nn.Module:
    return timm.create_model(f"local-dir:{out_dir}", pretrained=True).eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    assert torch.equal(ya, yb)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Change every float tensor, so that freshly initialised weights could not match by chance."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.01)
    return model.eval()


def test_kat_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _perturbed(timm.create_model("kat_t", img_size=32, num_classes=7))
    out = export_model(model, tmp_path / "export", "kat_t")
    assert out == tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]

    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "kat_t"
    assert config["num_classes"] == 7
    assert config["num_features"] == 192
    assert config["model_args"]["img_size"] == [32, 32]
    assert config["model_args"]["num_classes"] == 7
    cfg = config["pretrained_cfg"]
    assert cfg["num_classes"] == 7 and cfg["input_size"] == [3, 32, 32]
    assert cfg["first_conv"] == "patch_embed.proj" and cfg["classifier"] == "head"
    assert not {"url", "file", "source", "hf_hub_id", "architecture"} & set(cfg)

    weights = safetensors.torch.load_file(out / "model.safetensors")
    assert weights.keys() == model.state_dict().keys()

    rebuilt = _rebuild(out)
    assert isinstance(rebuilt, KAT) and rebuilt.num_classes == 7
    _same_outputs(model, rebuilt, torch.randn(2, 3, 32, 32))


def test_a_one_channel_model_with_its_own_normalisation_exports_without_timms_channel_warning(tmp_path, caplog):
    """train.py exports the digits models (1 channel, RGB architectures) with the task's mean and std: timm's
    warning that it averaged the architecture's RGB mean and std would be about values the export replaces. Without
    a mean and std of the caller's, timm's averaged ones are exported and its warning stays."""
    model = timm.create_model("kat_t", in_chans=1, img_size=8, patch_size=2, num_classes=10)
    with caplog.at_level("WARNING", logger="timm.data.model_config"):
        out = export_model(model, tmp_path / "own", "kat_t", pretrained_cfg=dict(mean=[0.3], std=[0.4]))
    assert not [r for r in caplog.records if r.name == "timm.data.model_config"]
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert (cfg["mean"], cfg["std"], cfg["input_size"]) == ([0.3], [0.4], [1, 8, 8])

    caplog.clear()
    with caplog.at_level("WARNING", logger="timm.data.model_config"):
        out = export_model(model, tmp_path / "averaged", "kat_t")
    assert any("does not match 1 channels" in r.getMessage() for r in caplog.records)
    assert len(json.loads((out / "config.json").read_text())["pretrained_cfg"]["mean"]) == 1


def test_resnet_round_trip_with_extra_model_args_and_cfg(tmp_path):
    torch.manual_seed(0)
    model = _perturbed(timm.create_model("resnet18", num_classes=3))
    out = export_model(
        model,
        tmp_path,
        "resnet18",
        model_args={"num_classes": 3},
        pretrained_cfg={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "label_names": ["a", "b", "c"]},
    )
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18"
    assert config["num_classes"] == 3 and config["num_features"] == 512
    assert config["model_args"]["num_classes"] == 3
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]
    assert config["pretrained_cfg"]["label_names"] == ["a", "b", "c"]

    rebuilt = _rebuild(out)
    assert rebuilt.num_classes == 3
    assert list(rebuilt.pretrained_cfg["mean"]) == [0.5, 0.5, 0.5]
    _same_outputs(model, rebuilt, torch.randn(2, 3, 64, 64))
    # the running statistics of the batch norms came along too
    assert torch.equal(rebuilt.bn1.running_mean, model.bn1.running_mean)


def test_model_not_built_by_timm_needs_its_model_args(tmp_path):
    torch.manual_seed(0)
    model = _perturbed(KAT(img_size=32, num_classes=5, embed_dim=192, depth=12, num_heads=3))
    export_model(model, tmp_path, "kat_t", model_args={"img_size": 32})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_args"]["num_classes"] == 5 and config["model_args"]["img_size"] == 32
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    _same_outputs(model, _rebuild(tmp_path), torch.randn(2, 3, 32, 32))


def test_shared_tensors_and_wrappers(tmp_path):
    model = timm.create_model("resnet18", num_classes=3).eval()
    model.extra = torch.nn.Linear(4, 4)
    model.extra2 = model.extra  # the same parameters under two names
    export_model(torch.nn.DataParallel(model), tmp_path / "shared", "resnet18")
    weights = safetensors.torch.load_file(tmp_path / "shared" / "model.safetensors")
    assert "extra.weight" in weights and "extra2.weight" in weights
    assert not any(k.startswith("module.") for k in weights)
    assert torch.equal(weights["extra.weight"], weights["extra2.weight"])


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    model = timm.create_model("resnet18", num_classes=3)
    export_model(model, tmp_path, "resnet18")
    model2 = _perturbed(timm.create_model("resnet18", num_classes=3))
    export_model(model2, tmp_path, "resnet18")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    _same_outputs(model2, _rebuild(tmp_path), torch.randn(1, 3, 64, 64))


def test_errors(tmp_path):
    model = timm.create_model("resnet18", num_classes=3)
    with pytest.raises(ValueError, match="not a model registered with timm"):
        export_model(model, tmp_path, "no_such_model")
    with pytest.raises(ValueError, match="num_classes"):
        export_model(model, tmp_path, "resnet18", model_args={"num_classes": 4})
    with pytest.raises(ValueError, match="JSON"):
        export_model(model, tmp_path, "resnet18", pretrained_cfg={"mean": object()})
    assert not any(tmp_path.iterdir())
