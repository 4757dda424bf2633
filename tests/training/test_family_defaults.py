"""Every family's smallest model has a default task that learns (``python train.py model=NAME``): the model config
chooses the data, ``configs/recipe/<model>_<data>.yaml`` tunes the run (configs/train.yaml). Here: what the
defaults compose to, that the command line (``data=``, ``img_size=``, any key) and ``experiment=`` win over them,
and one short training run per family, through Hydra compose and the trainer, whose training loss falls."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("hydra")  # the entry points' dependency (the GPU machine runs the kernel tests without it)
from hydra import compose, initialize_config_dir  # noqa: E402

from tests.helpers import load_script  # noqa: E402
from zoo.training.checkpoint import load_checkpoint  # noqa: E402
from zoo.training.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
# Every family's smallest model and the data its config chooses.
DEFAULT_DATA = {
    "kat_t": "digits",
    "inceptionnext_a": "digits",
    "unireplknet_a": "digits",
    "nat_m": "digits",
    "dinat_m": "digits",
    "s4d_t": "sdigits",
    "longconv_t": "sdigits",
}
# Smaller members of each family for the training runs (the default task and recipe otherwise unchanged).
SMALL = {
    "kat_t": {"embed_dim": 32, "depth": 2, "num_heads": 2},
    "inceptionnext_a": {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]},
    "unireplknet_a": {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]},
    "nat_m": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4]},
    "dinat_m": {"embed_dim": 16, "depths": [2, 2, 1, 1], "num_heads": [1, 2, 2, 4]},
    "s4d_t": {"d_model": 32, "n_layers": 2, "d_state": 16},
    "longconv_t": {"d_model": 32, "n_layers": 2},
}


def _compose(*overrides: str, hydra_config: bool = False, run_dir: Path | str = "x"):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={run_dir}", *overrides], return_hydra_config=hydra_config)


def _without_hydra(cfg):
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return container


def _image_size(cfg) -> int:
    """The image side the trainer makes the data at (its rule: img_size, else data.img_size)."""
    return cfg.img_size or cfg.data.img_size


def test_every_family_has_a_default_task():
    for model, data in DEFAULT_DATA.items():
        cfg = _compose(f"model={model}", hydra_config=True)
        assert (cfg.model.name, cfg.data.name) == (model, data)
        recipe = cfg.hydra.runtime.choices.get("recipe")
        assert recipe == f"{model}_{data}" and (CONFIGS / "recipe" / f"{recipe}.yaml").is_file(), (model, recipe)
    # the image sizes the architectures need: InceptionNeXt downsamples by 32; UniRepLKNet's large kernels and the
    # neighbourhoods of NAT / DiNAT see more than one position on the 8 px digits only when they are resized
    assert _image_size(_compose("model=kat_t")) == 8
    assert _image_size(_compose("model=inceptionnext_a")) >= 32
    for model in ("unireplknet_a", "nat_m", "dinat_m"):
        assert _image_size(_compose(f"model={model}")) >= 16, model
    # LongConv's kernel covers the 64-pixel sequences and starts outside the squash's dead zone
    kwargs = _compose("model=longconv_t").model.kwargs
    assert kwargs.l_max == 64 and kwargs.lam == 0.0


def test_every_recipe_names_a_model_and_a_data_config():
    models = {path.stem for path in (CONFIGS / "model").glob("*.yaml")}
    datas = {path.stem for path in (CONFIGS / "data").glob("*.yaml")}
    recipes = sorted((CONFIGS / "recipe").glob("*.yaml"))
    assert recipes
    for path in recipes:
        pairs = [(m, path.stem[len(m) + 1 :]) for m in models if path.stem.startswith(f"{m}_")]
        assert any(data in datas for _, data in pairs), f"{path.name} is not <model>_<data>.yaml"
        assert path.read_text().startswith("# @package _global_"), path.name


@pytest.mark.parametrize("model", list(DEFAULT_DATA))
def test_another_data_on_the_command_line_wins_and_drops_the_recipe(model):
    """data=cifar10 composes exactly what it composes with no recipe at all (``~recipe``): as before defaults."""
    chosen = _compose(f"model={model}", "data=cifar10")
    assert chosen.data.name == "cifar10"
    assert _without_hydra(chosen) == _without_hydra(_compose(f"model={model}", "data=cifar10", "~recipe"))


def test_the_default_data_given_explicitly_keeps_the_recipe():
    assert _compose("model=longconv_t", "~recipe").model.kwargs.l_max == 1024  # ~recipe (used above) drops it
    assert _without_hydra(_compose("model=longconv_t", "data=sdigits")) == _without_hydra(_compose("model=longconv_t"))
    assert _image_size(_compose("model=inceptionnext_a", "data=digits")) >= 32


def test_image_size_and_other_keys_on_the_command_line_win():
    assert _image_size(_compose("model=inceptionnext_a", "img_size=64")) == 64
    assert _image_size(_compose("model=inceptionnext_a", "data.img_size=40")) == 40
    assert _image_size(_compose("model=nat_m", "img_size=8")) == 8
    cfg = _compose("model=longconv_t", "model.kwargs.lam=0.002", "epochs=3", "optim.lr=5e-4")
    assert (cfg.model.kwargs.lam, cfg.epochs, cfg.optim.lr, cfg.model.kwargs.l_max) == (0.002, 3, 5e-4, 64)


@pytest.mark.parametrize(
    "model,experiment,data",
    [
        ("longconv_t", "longconv_scifar", "scifar"),
        ("longconv_t", "longconv_listops", "listops"),
        ("s4d_t", "s4d_scifar", "scifar"),
        ("inceptionnext_a", "inceptionnext_imagenet", "imagenet"),
        ("nat_m", "nat_imagenet", "imagenet"),
    ],
)
def test_an_experiment_chooses_its_own_data_and_no_recipe_applies(model, experiment, data):
    cfg = _compose(f"model={model}", f"experiment={experiment}")
    assert cfg.data.name == data
    assert _without_hydra(cfg) == _without_hydra(_compose(f"model={model}", f"experiment={experiment}", "~recipe"))


def _short_run(model: str, run_dir: Path, *extra: str, samples: int = 256, epochs: int = 4):
    """The model's default config for a short CPU run: its smaller member (``SMALL``), ``samples`` training images
    (a quarter as many for evaluation), batches of 32, ``epochs`` epochs without warm-up."""
    overrides = [f"++model.kwargs.{key}={value}" for key, value in SMALL[model].items()]
    return _compose(
        f"model={model}",
        *overrides,
        *extra,
        f"data.train_subset={samples}",
        f"data.eval_subset={samples // 4}",
        "batch_size=32",
        f"epochs={epochs}",
        "sched.warmup_epochs=0",
        "optim.lr=3e-3",
        "progress=false",
        "device=cpu",
        run_dir=run_dir,
    )


@pytest.mark.parametrize("model", list(DEFAULT_DATA))
def test_the_default_task_trains(model, tmp_path, one_intra_op_thread):
    """The model's default config (a smaller member of the family, a subset of the data, four short epochs without
    warm-up) runs through the trainer and its training loss falls."""
    summary = train(_short_run(model, tmp_path))
    assert (summary["model"], summary["data"], summary["epochs"]) == (model, DEFAULT_DATA[model], 4)
    losses = [row["train_loss"] for row in load_checkpoint(Path(summary["checkpoint"]))["history"]]
    assert all(math.isfinite(loss) for loss in losses), losses
    assert losses[-1] < losses[0] - 0.05, losses  # measured drops: 0.1 (S4D, LongConv) to 1.2 (InceptionNeXt)


@pytest.mark.parametrize("model", ["kat_t", "inceptionnext_a"])
def test_the_default_task_trains_compiled(model, tmp_path, one_intra_op_thread):
    """``compile=true``: the trainer runs the model through torch.compile (fullgraph) and its training loss falls
    as in eager mode (every family's compiled step: tests/training/test_train_step.py)."""
    summary = train(_short_run(model, tmp_path, "compile=true", samples=128, epochs=2))
    losses = [row["train_loss"] for row in load_checkpoint(Path(summary["checkpoint"]))["history"]]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0], losses


def test_the_readme_table_goes_between_the_markers():
    script = load_script("train_defaults")
    assert set(script.MODELS) == set(DEFAULT_DATA)
    row = {"model": "s4d_t", "data": "sdigits", "size": "length 64", "epochs": 30, "minutes": 1.38, "final_top1": 97.5}
    info = {"cores": 2, "cpu": "a CPU", "torch": "2.x", "torch_threads": 2, "date": "2026-12-04"}
    table = script.markdown_table([row], info)
    assert "| `s4d_t` | sdigits | length 64 | 30 | 1.4 | 97.5 |" in table.splitlines()
    start, end = script.START_MARKER, script.END_MARKER
    readme = f"# Title\n{start}\nold table\n{end}\nafter\n"
    assert script.replace_between_markers(readme, table) == f"# Title\n{start}\n{table}\n{end}\nafter\n"
    with pytest.raises(ValueError, match="expected one"):
        script.replace_between_markers("# no markers\n", table)
    with pytest.raises(ValueError, match="comes before"):
        script.replace_between_markers(f"{end}\n{start}\n", table)
