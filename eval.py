"""Evaluate a trained model from a checkout: ``python eval.py checkpoint=RUN_DIR`` (Hydra; configs/eval.yaml, README).

The same command as the installed ``zoo-eval`` (:func:`zoo.cli.evaluate`), reading the ``configs/`` folder beside
this file.
"""

from pathlib import Path

from zoo.cli import evaluate

if __name__ == "__main__":
    evaluate(config_path=str(Path(__file__).resolve().parent / "configs"))
