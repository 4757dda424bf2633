"""What each import loads: the op package only torch and triton; the models register with timm in either order;
nothing imports the entry points' dependencies. Each case runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENTRY_POINT_DEPENDENCIES = {"hydra", "omegaconf", "wandb", "matplotlib", "sklearn"}


def _loaded_after(code: str) -> set[str]:
    """The modules ``sys.modules`` holds after running ``code`` in a fresh interpreter."""
    script = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def _top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_the_op_package_imports_only_torch_and_triton():
    loaded = _loaded_after("import zoo.kernels, zoo.kernels.neighborhood")
    assert not _top_level(loaded) & ({"timm", "einops", "safetensors"} | ENTRY_POINT_DEPENDENCIES)
    zoo_modules = {name for name in loaded if name.startswith("zoo.")}
    assert all(name.startswith("zoo.kernels") for name in zoo_modules), sorted(zoo_modules)


def test_import_zoo_alone_loads_no_dependency():
    loaded = _loaded_after("import zoo")
    assert not _top_level(loaded) & {"torch", "triton", "timm"}, "`import zoo` must stay light; its parts load lazily"


@pytest.mark.parametrize(
    "code", ["import zoo\nimport timm", "import timm\nimport zoo", "import zoo.kernels\nimport timm"]
)
def test_models_register_with_timm_whichever_is_imported_first(code):
    script = f"{code}\nassert timm.is_model('kat_t') and timm.is_model('nat_m'), 'not registered'"
    subprocess.run([sys.executable, "-c", script], check=True)


def test_models_and_training_do_not_pull_entry_point_dependencies():
    loaded = _loaded_after("import zoo, timm, zoo.training, zoo.data\nzoo.create_model('kat_t')")
    assert not _top_level(loaded) & ENTRY_POINT_DEPENDENCIES, sorted(_top_level(loaded) & ENTRY_POINT_DEPENDENCIES)


def test_lazy_attributes_and_clear_error_for_unknown_ones():
    script = (
        "import zoo\n"
        "assert zoo.create_model('kat_t', num_classes=3).head.out_features == 3\n"
        "assert zoo.KAN is zoo.layers.KAN and callable(zoo.list_models)\n"
        "try:\n    zoo.no_such_thing\nexcept AttributeError as e:\n    assert 'no_such_thing' in str(e)\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


SUBPACKAGES = ["zoo.data", "zoo.kernels", "zoo.layers", "zoo.models", "zoo.training"]


@pytest.mark.parametrize("first", SUBPACKAGES)
def test_models_register_whichever_part_of_zoo_is_imported_first(first):
    """timm may first be imported from inside a zoo package, while it initialises: the import hook then loads
    zoo.models mid-import. Importing a deeper module runs its package's ``__init__`` first, so the packages cover
    every order (and zoo.layers imports timm before any of its submodules)."""
    import zoo

    assert sorted(f"zoo.{name}" for name in zoo._SUBPACKAGES) == SUBPACKAGES, "a new subpackage: add it here"
    script = f"import {first}, timm\nassert timm.is_model('kat_t') and timm.is_model('s4d_t'), 'not registered'"
    subprocess.run([sys.executable, "-c", script], check=True)
