"""Importing this module registers every built-in role, defence, dataset and model."""

from splitsim import data, defences, models, roles  # noqa: F401
