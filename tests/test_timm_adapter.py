"""zoo._timm: the only module that reaches into timm's private modules; its wrappers behave as timm's functions;
the installed timm is in the range setup.cfg supports."""

from __future__ import annotations

import ast
import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from packaging.requirements import Requirement

import zoo  # noqa: F401  (registers the zoo's models with timm)
from zoo import _timm

ROOT = Path(__file__).resolve().parents[1]


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for an attribute chain on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _private_timm_names(path: Path) -> list[tuple[int, str]]:
    """(line, name) of each import of, or attribute chain through, a private part of timm (``timm.x._y``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.Attribute):
            names = [_dotted(node)]
        else:
            continue
        for name in filter(None, names):
            parts = name.split(".")
            if parts[0] == "timm" and any(part.startswith("_") for part in parts[1:]):
                found.append((node.lineno, name))
    return found


def test_only_the_adapter_uses_private_timm_modules():
    adapter = ROOT / "zoo" / "_timm.py"
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sorted((ROOT / "zoo").rglob("*.py"))
        if path != adapter
        for line, name in _private_timm_names(path)
    ]
    assert not offenders, "import private timm functions from zoo._timm:\n" + "\n".join(offenders)
    assert {name for _, name in _private_timm_names(adapter)} == {
        "timm.models._features",
        "timm.models._features.feature_take_indices",
        "timm.models._hub",
        "timm.models._hub.save_config_for_hf",
    }


def test_the_adapter_imports_no_timm_until_used():
    """timm's first import may come from zoo._timm itself (the import hook then loads zoo.models, which imports
    from zoo._timm): the models still register, and the wrappers work."""
    script = (
        "import sys\nimport zoo._timm\nassert 'timm' not in sys.modules\nimport timm\n"
        "assert timm.is_model('nat_m') and timm.is_model('unireplknet_a'), 'not registered'\n"
        "assert zoo._timm.feature_take_indices(4, 2) == ([2, 3], 3)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


@pytest.mark.parametrize(
    "indices,expected", [(None, ([0, 1, 2, 3], 3)), (2, ([2, 3], 3)), ([0, -1], ([0, 3], 3)), ((1,), ([1], 1))]
)
def test_feature_take_indices_is_timms(indices, expected):
    from timm.models._features import feature_take_indices

    assert _timm.feature_take_indices(4, indices) == feature_take_indices(4, indices) == expected
    assert _timm.feature_take_indices(4, indices, as_set=True)[0] == set(expected[0])
    with pytest.raises(AssertionError, match="out of range"):
        _timm.feature_take_indices(4, [4])


def test_save_config_for_hf_writes_timms_config(tmp_path):
    model = timm.create_model("resnet10t", num_classes=7, pretrained=False)
    _timm.save_config_for_hf(model, str(tmp_path / "config.json"), model_args={"num_classes": 7})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["num_classes"] == 7
    assert config["model_args"]["num_classes"] == 7


def test_installed_timm_is_in_the_supported_range():
    """setup.cfg bounds timm by the releases tested; a newer timm needs testing (zoo/_timm.py) and a new bound."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    requirements = [Requirement(line) for line in parser["options"]["install_requires"].split("\n") if line.strip()]
    (spec,) = [r.specifier for r in requirements if r.name == "timm"]
    assert any(s.operator in ("<", "<=", "==", "~=") for s in spec), f"timm{spec} has no upper bound"
    assert spec.contains(timm.__version__), f"timm {timm.__version__} is outside setup.cfg's timm{spec}"
