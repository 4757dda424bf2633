"""The command-line entry points: ``zoo-train`` (``python train.py``), ``zoo-eval`` (``python eval.py``) and
``zoo-export`` (ONNX export, :func:`export`; a plain argparse command).

``zoo-train`` and ``zoo-eval`` are Hydra applications over the same configs. The installed commands read them from the package
``zoo.configs`` (the wheel ships the repository's ``configs/`` folder under that name; an editable install maps
it to the folder); ``train.py`` and ``eval.py`` in a checkout read the folder beside them, so they also run
without an install (``PYTHONPATH=. python train.py ...``). Run directories go under the current folder
(``runs/<model>-<data>/<time>/``, ``runs/eval/<time>/``), and the last line of stdout is the run's JSON summary.

This module imports hydra: it belongs to the entry points, not to the library (``import zoo`` never loads it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

PACKAGE_CONFIGS = "pkg://zoo.configs"


def _print_summary(summary: dict[str, Any]) -> None:
    sys.stderr.flush()  # the progress bar and logs first: the summary is the last line
    print(json.dumps(summary), flush=True)


def _train(cfg: DictConfig) -> None:
    from zoo.training.trainer import train as run_training

    summary = run_training(cfg)  # None on the ranks other than 0 under torchrun
    if summary is not None:
        _print_summary(summary)


def _evaluate(cfg: DictConfig) -> None:
    from zoo.training.evaluation import run_eval

    _print_summary(run_eval(cfg))


def _quiet_hydra_on_other_ranks() -> None:
    """Under torchrun only rank 0 writes: the other ranks' Hydra writes no config, log or run directory of its
    own (the run directory is rank 0's, shared by broadcast)."""
    if os.environ.get("RANK", "0") == "0":
        return
    sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    if not any(arg.startswith("hydra.run.dir=") for arg in sys.argv):
        sys.argv.append("hydra.run.dir=.")


def train(config_path: str = PACKAGE_CONFIGS) -> None:
    """``zoo-train model=kat_t [data=...] [KEY=VALUE ...]``: train a model (configs ``train.yaml``; README).

    Multi-GPU / multi-node: ``torchrun --nproc_per_node=N $(which zoo-train) ...`` (rank 0 writes and prints).
    The last line of stdout is a JSON summary: best_top1, final_top1, epochs, run_dir, checkpoint, export.
    """
    _quiet_hydra_on_other_ranks()
    hydra.main(config_path=config_path, config_name="train", version_base="1.3")(_train)()


def evaluate(config_path: str = PACKAGE_CONFIGS) -> None:
    """``zoo-eval checkpoint=RUN_DIR [data=...]``: evaluate a trained model (configs ``eval.yaml``; README).

    ``checkpoint`` is a training checkpoint (last.pt / best.pt), a run directory (its last.pt) or an export
    directory; or give ``model=NAME pretrained_file=PATH``. Writes metrics.json and confusion_matrix.png to
    ``out_dir``; the last line of stdout is a JSON summary (top1, top5, loss, images_per_s, ...).
    """
    hydra.main(config_path=config_path, config_name="eval", version_base="1.3")(_evaluate)()


# ---------------------------------------------------------------------------------------------- zoo-export

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo-export",
        description="Export a zoo model to ONNX (standard operators only; UniRepLKNet and InceptionNeXt deployed), "
        "checked by onnx.checker. The last line of stdout is a JSON summary.",
    )
    parser.add_argument(
        "source",
        help="a registered model name (random weights unless --pretrained-file), a train.py checkpoint "
        "(last.pt / best.pt), a run directory, or an export directory (config.json + model.safetensors)",
    )
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        metavar="N",
        help="one sample's shape: C H W (images), L D (sequences) or L (token ids); default: the size the model "
        "was built or trained for",
    )
    parser.add_argument("--static-batch", action="store_true", help="a fixed batch of 1 (default: dynamic batch)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 20)")
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model constructor argument (VALUE read as JSON, else as a string), e.g. depths=[2,2,6,2]; repeatable",
    )
    parser.add_argument("--pretrained-file", help="weights for a model given by name (.pth / .safetensors)")
    parser.add_argument(
        "--training-form",
        action="store_true",
        help="export a UniRepLKNet or InceptionNeXt in the form it is in (default: re-parameterise it to its "
        "deployed form first)",
    )
    parser.add_argument(
        "--sequence-conv",
        choices=("direct", "dft"),
        default="direct",
        help="S4D / LongConv convolutions as a direct Conv (default) or through ONNX DFT",
    )
    parser.add_argument("--verify", action="store_true", help="also compare onnxruntime's outputs with PyTorch's")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle the checkpoint with the full unpickler (runs any code it holds; only for files you trust)",
    )
    return parser


def _model_args(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _load_for_export(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(model, description) for ``zoo-export``'s source: a path (checkpoint, run or export directory) or a name."""
    from zoo.training.evaluation import load_model_for_eval

    model_args = _model_args(args.model_arg)
    path = Path(args.source).expanduser()
    if path.exists():
        if args.pretrained_file:
            raise ValueError("--pretrained-file goes with a model name, not with a checkpoint or directory")
        return load_model_for_eval(checkpoint=path, model_kwargs=model_args, trust=args.trust_checkpoint)
    if os.sep in args.source or args.source.endswith(_WEIGHT_SUFFIXES):
        raise FileNotFoundError(2, f"{path} does not exist (a checkpoint, run or export directory was expected)")
    if args.pretrained_file:
        return load_model_for_eval(
            model=args.source,
            pretrained_file=args.pretrained_file,
            model_kwargs=model_args,
            trust=args.trust_checkpoint,
        )
    import zoo

    model = zoo.create_model(args.source, **model_args)
    return model.eval(), {"architecture": args.source, **model_args, "source": None}


def _default_input_size(model: Any, described: dict[str, Any]) -> tuple[int, ...] | None:
    """(C, H, W) from the image size a checkpoint was trained at, where the model takes images."""
    img_size, in_chans = described.get("img_size"), described.get("in_chans")
    if img_size is None or not isinstance(in_chans, int) or getattr(model, "vocab_size", None):
        return None
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return in_chans, int(h), int(w)


def _export(args: argparse.Namespace) -> dict[str, Any]:
    from zoo.deploy.onnx import DEFAULT_OPSET, export_onnx, has_deployed_form

    model, described = _load_for_export(args)
    input_size = tuple(args.input_size) if args.input_size else _default_input_size(model, described)
    path = export_onnx(
        model,
        args.output,
        input_size=input_size,
        dynamic_batch=not args.static_batch,
        opset=args.opset,
        deploy=not args.training_form,
        reparameterize=not args.training_form and has_deployed_form(model),
        sequence_conv=args.sequence_conv,
        verify=args.verify,
    )
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        "onnx": str(path),
        "architecture": described.get("architecture"),
        "source": described.get("source"),
        "input_shape": [dim.dim_param or dim.dim_value for dim in graph.input[0].type.tensor_type.shape.dim],
        "output_shape": [dim.dim_param or dim.dim_value for dim in graph.output[0].type.tensor_type.shape.dim],
        "opset": DEFAULT_OPSET if args.opset is None else args.opset,
        "ops": sorted({node.op_type for node in graph.node}),
        "verified": bool(args.verify),
        "bytes": path.stat().st_size,
    }


def export(argv: list[str] | None = None) -> None:
    """``zoo-export NAME_OR_CHECKPOINT OUT.onnx [--input-size C H W] [--opset N] ...``: export a model to ONNX.

    The source is a registered model name (with ``--model-arg KEY=VALUE`` constructor arguments and optionally
    ``--pretrained-file``), a train.py checkpoint or run directory, or an export directory. A UniRepLKNet or
    InceptionNeXt is re-parameterised to its deployed form unless ``--training-form``. Bad input (an unknown name, a
    missing file, an input size the model cannot take, a model that cannot be exported) prints ``zoo-export: error:
    ...`` and exits with status 2. The last line of stdout is a JSON summary: onnx, architecture, source, input_shape,
    output_shape, opset, ops, verified, bytes.
    """
    from zoo.deploy.onnx import OnnxExportError
    from zoo.training.checkpoint import CheckpointError

    args = _export_parser().parse_args(argv)
    try:
        summary = _export(args)
    except (ValueError, FileNotFoundError, ImportError, CheckpointError, OnnxExportError) as error:
        print(f"zoo-export: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    _print_summary(summary)
