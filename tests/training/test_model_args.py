"""zoo.training.model_args: the one derivation of a model's arguments from its model config and the data, which
train.py and eval.py share."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from zoo.data import DATASETS
from zoo.training import evaluation
from zoo.training.model_args import DATA_ARGS, build_model_kwargs, plain

ROOT = Path(__file__).resolve().parents[2]


def test_data_args_then_inherited_then_kwargs():
    model_cfg = OmegaConf.create(
        {
            "name": "kat_t",
            "data_args": ["img_size", "patch_size", "in_chans", "num_classes"],
            "kwargs": {"depth": 2, "depths": [1, 2]},
        }
    )
    kwargs = build_model_kwargs(model_cfg, DATASETS["digits"], 8, 4)
    assert kwargs == {"img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 10, "depth": 2, "depths": [1, 2]}
    assert type(kwargs["depths"]) is list  # a ListConfig would not reach a checkpoint or config.json
    inherited = {"patch_size": 2, "img_size": 32, "depth": 4, "embed_dim": 64}
    kwargs = build_model_kwargs(model_cfg, DATASETS["digits"], None, 4, inherited)
    assert kwargs == {"patch_size": 2, "in_chans": 1, "num_classes": 10, "depth": 2, "embed_dim": 64, "depths": [1, 2]}
    assert inherited == {"patch_size": 2, "img_size": 32, "depth": 4, "embed_dim": 64}  # not modified


def test_only_listed_and_known_data_args():
    sequence_model = {"name": "s4d_t", "data_args": ["in_chans", "num_classes", "vocab_size"]}
    assert build_model_kwargs(sequence_model, DATASETS["listops"], 2001) == {
        "in_chans": 1,
        "num_classes": 10,
        "vocab_size": 18,
    }
    assert build_model_kwargs(sequence_model, DATASETS["sdigits"], 8) == {"in_chans": 1, "num_classes": 10}
    with pytest.raises(ValueError, match=r"data_args \['img_sz'\].*'img_size'"):
        build_model_kwargs({"name": "x", "data_args": ["img_sz"]}, DATASETS["digits"], 8)
    assert set(DATA_ARGS) == {"img_size", "patch_size", "in_chans", "num_classes", "vocab_size"}


def test_plain():
    value = {"a": OmegaConf.create({"b": [1, {"c": "${x}"}], "x": 3}), "t": (OmegaConf.create([1]),), "s": "s"}
    assert plain(value) == {"a": {"b": [1, {"c": 3}], "x": 3}, "t": ([1],), "s": "s"}
    assert plain(None) is None


@pytest.mark.parametrize("model,data", [("kat_t", "digits"), ("nat_m", "digits"), ("s4d_t", "listops")])
def test_train_and_eval_derive_the_same_model_arguments(model, data, monkeypatch, tmp_path):
    """eval.py with model=NAME builds the model with the arguments train.py gives it for the same configs."""
    pytest.importorskip("hydra")
    from hydra import compose, initialize_config_dir

    from zoo.training.trainer import build_model

    overrides = [f"model={model}", f"data={data}", "+model.kwargs.drop_rate=0.1"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        train_cfg = compose("train", overrides=[*overrides, f"run_dir={tmp_path}"])
        eval_cfg = compose("eval", overrides=[*overrides, f"out_dir={tmp_path}"])
    _, trained_with = build_model(train_cfg, DATASETS[data], train_cfg.data.img_size, {})

    class Stop(Exception):
        pass

    def capture(checkpoint, name, pretrained_file, model_kwargs, trust=False):
        captured.update(name=name, kwargs=model_kwargs)
        raise Stop

    captured = {}
    monkeypatch.setattr(evaluation, "load_model_for_eval", capture)
    with pytest.raises(Stop):
        evaluation.run_eval(eval_cfg)
    assert captured == {"name": model, "kwargs": trained_with}
