"""The Hydra configs of ``zoo-train`` / ``zoo-eval``: the wheel ships this folder as the package ``zoo.configs``."""
