"""zoo.data.registry: registering and looking up datasets; zoo.data's modules import each other without a cycle."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import zoo.data
from zoo.data import DATASETS, DatasetInfo, create_dataset, create_loaders, register_dataset, registry

DATA_PACKAGE = Path(zoo.data.__file__).parent


@pytest.fixture
def scratch_registry():
    """The registry as it is, restored after the test."""
    saved = dict(registry.DATASETS), dict(registry._BUILDERS)
    yield
    registry.DATASETS.clear()
    registry.DATASETS.update(saved[0])
    registry._BUILDERS.clear()
    registry._BUILDERS.update(saved[1])


def test_every_dataset_is_registered_with_its_info():
    expected = {"digits", "cifar10", "cifar100", "imagenet", "sdigits", "smnist", "scifar", "scifargray", "copying"}
    expected |= {"listops", "listopsshort", "assocrecall"}
    assert set(DATASETS) == expected == set(registry._BUILDERS)
    assert all(info.name == name for name, info in DATASETS.items())
    # the sequence views of digits and CIFAR-10 normalise as those do
    assert dataclasses.replace(DATASETS["sdigits"], name="digits") == DATASETS["digits"]
    assert dataclasses.replace(DATASETS["scifar"], name="cifar10") == DATASETS["cifar10"]
    assert zoo.data.default_img_size("listops_short") == DATASETS["listopsshort"].native_size == 100


def test_a_registered_builder_gets_a_checked_request(scratch_registry):
    requests = []

    @register_dataset(DatasetInfo("toy", 3, 1, 4, (0.0,), (1.0,)), DatasetInfo("toybig", 3, 1, 8, (0.0,), (1.0,)))
    def build(request):
        requests.append(request)
        n = 12 if request.split == "train" else 6
        return TensorDataset(torch.zeros(n, 1, request.img_size, request.img_size), torch.arange(n) % 3)

    assert len(create_dataset("Toy-Big", "val", root="r", is_training=True, augment={"enabled": False, "x": 1})) == 6
    request = requests[-1]
    assert (request.name, request.split, request.root, request.img_size) == ("toybig", "test", "r", 8)
    assert request.is_training and not request.augment and not request.augmenting
    assert request.augment_options == {"x": 1} and request.info == DATASETS["toybig"]
    train, _, info = create_loaders("toy", batch_size=4, img_size=5)
    assert info == DATASETS["toy"] and next(iter(train))[0].shape == (4, 1, 5, 5)
    assert requests[-2].augmenting and requests[-1].split == "test"  # the loaders' train, then test split


def test_registration_errors(scratch_registry):
    info = DatasetInfo("toy", 3, 1, 4, (0.0,), (1.0,))
    with pytest.raises(ValueError, match="'toy_set' as 'toyset'"):
        register_dataset(dataclasses.replace(info, name="toy_set"))(lambda request: None)
    with pytest.raises(ValueError, match="already registered by zoo.data.datasets._build_digits"):
        register_dataset(dataclasses.replace(info, name="digits"))(lambda request: None)
    with pytest.raises(ValueError, match="at least one"):
        register_dataset()
    assert DATASETS["digits"].num_classes == 10 and "toyset" not in DATASETS


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown dataset 'listop_shrt'.*Did you mean 'listopsshort'"):
        create_dataset("listop_shrt", "train")


def _zoo_data_imports(path: Path) -> set[str]:
    """The zoo.data modules ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.removeprefix("zoo.data.") in _modules()}
    return found - {f"zoo.data.{path.stem}"}


def _modules() -> set[str]:
    return {p.stem for p in DATA_PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_zoo_data_has_no_import_cycle():
    """No module of zoo.data imports, even lazily inside a function, a module that imports it back (directly or
    through others): the registry is at the bottom, the package's __init__ at the top."""
    graph = {
        name: {i.removeprefix("zoo.data.") for i in _zoo_data_imports(DATA_PACKAGE / f"{name}.py")}
        for name in _modules()
    }
    assert graph["registry"] == set()
    visiting, done = [], set()

    def visit(name):
        if name in visiting:
            raise AssertionError(f"import cycle: {' -> '.join(visiting[visiting.index(name) :] + [name])}")
        if name in done:
            return
        visiting.append(name)
        for other in sorted(graph[name]):
            visit(other)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
