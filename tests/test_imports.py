"""`import zoo` / `import kernels` pull in only torch, triton, timm, einops and safetensors (DESIGN.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("hydra", "omegaconf", "wandb", "matplotlib", "sklearn")


@pytest.mark.parametrize("package", ["zoo", "kernels"])
def test_import_does_not_pull_entry_point_dependencies(package):
    code = (
        f"import sys, {package}; "
        f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"`import {package}` imported {out}"
