"""The distribution as a user gets it: the wheel holds only the package ``zoo`` (with its configs), installs beside
Hugging Face's ``kernels`` in a fresh virtualenv, and its ``zoo-train`` / ``zoo-eval`` run from an empty folder
with no checkout in sight.

Slow (about two minutes): it builds the wheel, and pip fetches ``kernels`` (and its build needs) from the package
index. The fresh virtualenv sees this environment's packages through a folder of links (so torch is not installed
twice), minus this project's own installation, so that pip installs the wheel for real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "triton_zoo"  # the wheel's file name and dist-info spell triton-zoo this way


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    run = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert run.returncode == 0, f"{' '.join(map(str, args))} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of what the build reads (the checkout itself stays clean)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("zoo", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)])
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_holds_only_the_zoo_package_with_every_subpackage_and_config(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"zoo"}, f"the wheel installs other top-level names: {sorted(top_level - {'zoo'})}"
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "zoo").rglob("__init__.py")}
    assert {f"{package}/__init__.py" for package in packages} <= set(names), "a subpackage is missing from setup.cfg"
    configs = {f"zoo/configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert configs and configs <= set(names), sorted(configs - set(names))[:5]
    info = f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"
    assert wheel.name.startswith(f"{DISTRIBUTION}-")
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "zoo-train = zoo.cli:train" in entry_points and "zoo-eval = zoo.cli:evaluate" in entry_points
    licenses = [name for name in names if name.startswith(f"{info}/") and name.endswith("/LICENSE")]
    assert licenses, "the wheel carries no LICENSE"
    assert zipfile.ZipFile(wheel).read(licenses[0]).decode() == (ROOT / "LICENSE").read_text()


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv with ``pip install <wheel> kernels``; this environment's other packages visible."""
    root = tmp_path_factory.mktemp("venv")
    shared = root / "shared-site-packages"  # links to this environment's packages, minus this project
    shared.mkdir()
    own = (DISTRIBUTION, f"__editable__.{DISTRIBUTION}", f"__editable___{DISTRIBUTION}", "zoo")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(own) and entry.suffix != ".pth":
            (shared / entry.name).symlink_to(entry)
    env_dir = root / "env"
    _run([sys.executable, "-m", "venv", str(env_dir)])
    python = env_dir / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(site) / "shared-site-packages.pth").write_text(f"{shared}\n")
    _run([str(python), "-m", "pip", "install", "--quiet", str(wheel), "kernels"])
    return env_dir


def _clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH (the checkout must not be importable)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


OPS_SCRIPT = r"""
import sys, torch
import kernels, zoo, zoo.kernels as ops
from zoo.kernels.fftconv import fftconv
from zoo.kernels.neighborhood import neighborhood_attention
print(kernels.__file__); print(zoo.__file__)
assert callable(kernels.get_kernel), "`kernels` is not Hugging Face's"
torch.manual_seed(0)
r = torch.randn
cases = {
    "group_rational": lambda b: ops.group_rational(r(2, 5, 16), r(1, 6), r(4, 4), backend=b),
    "dwconv2d": lambda b: ops.dwconv2d(r(1, 3, 9, 7), r(3, 1, 5, 5), r(3), backend=b),
    "inception_dwconv2d": lambda b: ops.inception_dwconv2d(
        r(1, 8, 9, 7), r(2, 1, 3, 3), r(2), r(2, 1, 1, 11), r(2), r(2, 1, 11, 1), r(2), backend=b),
    "s4d_kernel": lambda b: ops.s4d_kernel(r(3) - 3, r(3, 4, 2), r(3, 4) - 1, r(3, 4), 13, backend=b),
    "fftconv": lambda b: fftconv(r(2, 3, 13), r(3, 13), r(3), activation="gelu", backend=b),
    "neighborhood_attention": lambda b: neighborhood_attention(r(1, 9, 2, 16), r(1, 9, 2, 16), r(1, 9, 2, 16),
                                                               kernel_size=3, backend=b),
}
for name, case in cases.items():
    torch.manual_seed(1); reference = case("torch")
    torch.manual_seed(1); triton = case("triton")
    torch.testing.assert_close(triton, reference, rtol=1e-4, atol=1e-4, msg=name)
print("ops:", " ".join(cases))
"""


def test_the_wheel_installs_beside_hugging_face_kernels_and_every_op_works(venv, tmp_path):
    out = _run(
        [str(venv / "bin" / "python"), "-c", OPS_SCRIPT], cwd=tmp_path, env=_clean_env(TRITON_INTERPRET="1")
    ).stdout.splitlines()
    kernels_file, zoo_file = Path(out[0]), Path(out[1])
    assert kernels_file.parts[-2:] == ("kernels", "__init__.py") and str(venv) in str(kernels_file)
    assert str(venv) in str(zoo_file), f"zoo imported from {zoo_file}, not from the installed wheel"
    assert out[-1].startswith("ops: ")


def test_installed_commands_train_and_evaluate_from_an_empty_folder(venv, tmp_path):
    bin_dir = venv / "bin"
    env = _clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    train = _run([str(bin_dir / "zoo-train"), "model=kat_t", "epochs=1", "progress=false"], cwd=tmp_path, env=env)
    summary = json.loads(train.stdout.strip().splitlines()[-1])
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent.parent == tmp_path / "runs" and (run_dir / "last.pt").is_file()
    evaluation = _run([str(bin_dir / "zoo-eval"), f"checkpoint={run_dir}"], cwd=tmp_path, env=env)
    result = json.loads(evaluation.stdout.strip().splitlines()[-1])
    assert Path(result["out_dir"]).parent == tmp_path / "runs" / "eval"
    assert abs(result["top1"] - summary["final_top1"]) <= 100.0 / result["num_images"] + 1e-9  # one image at most
