"""Constants shared by the steps, kept free of heavy imports (each step is its own process).
The run parameters and their defaults are in ``fraud_pipelines.params``."""

from __future__ import annotations

#: The model families the training step chooses from.
CANDIDATES = ("logreg", "random_forest", "hist_gb")
#: Largest allowed |ONNX - scikit-learn| fraud probability on the test set.
PARITY_TOLERANCE = 1e-5
#: The model's name: its prefix in the models bucket and its model-events key.
DEFAULT_MODEL_NAME = "fraud"
#: The simulator source's ``generator`` option: the project's simulator (the default) or the
#: Fraud Detection Handbook's own generator (``fraud_producers.handbook_data``).
GENERATORS = ("platform", "handbook")


def check_generator(generator: str) -> str:
    if generator not in GENERATORS:
        raise ValueError(f"generator: {generator!r} is not one of {', '.join(GENERATORS)}")
    return generator
