"""Fine-tuning (finetune=PATH): sources, class/channel/size changes, layer decay, freezing; the NaN guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("hydra")  # the entry points' dependency
import zoo  # noqa: E402,F401  (registers the zoo's models)
from tests.data.test_data import _image_folder  # noqa: E402
from tests.test_train import _compose  # noqa: E402
from zoo.training.checkpoint import load_checkpoint
from zoo.training.optim import param_groups
from zoo.training.trainer import train


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> dict:
    """A tiny kat_t trained one epoch on digits: 8 px, 4 px patches, 1 channel, 10 classes."""
    return train(_compose(tmp_path_factory.mktemp("digits") / "run", "epochs=1"))


def _weights(path: str | Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_digits_model_fine_tunes_on_a_three_class_rgb_folder(tmp_path, digits_run):
    _image_folder(tmp_path / "images")  # 3 classes of RGB images
    summary = train(
        _compose(
            tmp_path / "ft",
            "data=imagenet",
            f"data.root={tmp_path / 'images'}",
            "epochs=1",
            "batch_size=4",
            f"finetune={digits_run['run_dir']}",
        )
    )
    source, tuned = _weights(digits_run["checkpoint"]), _weights(summary["checkpoint"])
    # the image size (8) and the patch size (4) come from the source; channels and classes from the data
    assert tuned["pos_embed"].shape == source["pos_embed"].shape == (1, 5, 32)
    assert tuned["patch_embed.proj.weight"].shape == (32, 3, 4, 4)
    assert tuned["head.weight"].shape == (3, 32)
    config = json.loads((Path(summary["run_dir"]) / "export" / "config.json").read_text())
    assert config["model_args"]["img_size"] == 8 and config["model_args"]["patch_size"] == 4


def test_sources_export_and_foreign_file_and_a_new_image_size(tmp_path, digits_run):
    export = Path(digits_run["run_dir"]) / "export"
    source = _weights(digits_run["checkpoint"])
    run = train(_compose(tmp_path / "a", "epochs=1", "optim.lr=0", "sched=constant", f"finetune={export}"))
    tuned = _weights(run["checkpoint"])
    assert all(torch.equal(tuned[k], source[k]) for k in source)  # lr 0: the weights are the source's
    foreign = tmp_path / "official.pth"
    torch.save({"model": source, "epoch": 299}, foreign)  # the layout of the released KAT checkpoints
    run = train(
        _compose(tmp_path / "b", "epochs=1", "optim.lr=0", "sched=constant", f"finetune={foreign}", "img_size=16")
    )
    tuned = _weights(run["checkpoint"])
    assert tuned["pos_embed"].shape == (1, 17, 32)  # resampled from 2x2 to 4x4 patches
    assert torch.equal(tuned["blocks.1.mlp.act2.weight_denominator"], source["blocks.1.mlp.act2.weight_denominator"])


def test_layer_decay_and_frozen_backbone(tmp_path, digits_run):
    from zoo.training.finetune import freeze

    model = zoo.create_model("kat_t", img_size=8, patch_size=4, depth=2, embed_dim=32, num_heads=2)
    scales = {name: g["lr_scale"] for g in param_groups(model, 0.05, layer_decay=0.5) for name in g["param_names"]}
    assert scales["head.weight"] == 1.0 and scales["blocks.1.attn.qkv.weight"] == 0.5
    assert scales["blocks.0.attn.qkv.weight"] == 0.25 and scales["patch_embed.proj.weight"] == 0.125
    assert "head" not in freeze(model, "backbone")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    run = train(_compose(tmp_path / "f", "epochs=1", f"finetune={digits_run['run_dir']}", "freeze=backbone"))
    source, tuned = _weights(digits_run["checkpoint"]), _weights(run["checkpoint"])
    changed = {k for k in source if not torch.equal(source[k], tuned[k])}
    assert changed == {"head.weight", "head.bias"}
    # layer decay is in force from the first step (constant schedule, no warmup)
    run = train(
        _compose(
            tmp_path / "d",
            "epochs=1",
            f"finetune={digits_run['run_dir']}",
            "layer_decay=0.5",
            "sched=constant",
            "optim.lr=1e-3",
        )
    )
    lrs = sorted({round(g["lr"], 12) for g in load_checkpoint(run["checkpoint"])["optimizer"]["param_groups"]})
    assert lrs == [1.25e-4, 2.5e-4, 5e-4, 1e-3]  # patch embedding, block 0, block 1, head (2 blocks)


def test_bad_fine_tuning_requests(tmp_path, digits_run):
    with pytest.raises(ValueError, match="either resume= .* or finetune="):
        train(
            _compose(tmp_path / "x", "epochs=1", f"finetune={digits_run['run_dir']}", f"resume={digits_run['run_dir']}")
        )
    with pytest.raises(FileNotFoundError, match="no such file"):
        train(_compose(tmp_path / "y", "epochs=1", f"finetune={tmp_path / 'missing.pt'}"))
    with pytest.raises(ValueError, match="does not fit"):  # another architecture's weights
        train(_compose(tmp_path / "z", "epochs=1", f"finetune={digits_run['run_dir']}", "model.kwargs.depth=3"))
    with pytest.raises(ValueError, match="freeze: no top-level modules"):
        train(_compose(tmp_path / "w", "epochs=1", "freeze=[trunk]"))


def test_a_diverging_run_stops_at_the_first_nan_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "diverge"
    with pytest.raises(FloatingPointError, match=r"at epoch 1, step \d+ \(lr .*\).*none \(no epoch finished yet\)"):
        train(_compose(run_dir, "epochs=2", "optim=sgd", "optim.lr=1e12", "sched=constant"))
    assert not (run_dir / "last.pt").exists() and not (run_dir / "export").exists()


def test_nan_after_a_good_epoch_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    from zoo.training import trainer

    run_dir = tmp_path / "nan"
    train(_compose(run_dir, "epochs=1"))
    before = _weights(run_dir / "last.pt")
    nan_loss = torch.nn.Module()
    nan_loss.forward = lambda logits, targets: logits.sum() * float("nan")
    monkeypatch.setattr(trainer, "_criterion", lambda cfg, num_classes: (nan_loss, None))
    with pytest.raises(FloatingPointError, match=r"at epoch 2, step \d+ \(lr .*\).*Last good checkpoint: .*last.pt"):
        train(_compose(run_dir, "epochs=3", f"resume={run_dir}"))
    after = load_checkpoint(run_dir / "last.pt")
    assert after["epoch"] == 0 and all(torch.equal(after["model"][k], before[k]) for k in before)
