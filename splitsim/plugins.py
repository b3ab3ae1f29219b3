"""Importing this module registers every built-in role, defence, dataset and model."""

from splitsim import data, defences, models  # noqa: F401
from splitsim.threats import (  # noqa: F401
    hidden_learning,
    model_inversion,
    perturbation_probe,
    property_inference,
)
