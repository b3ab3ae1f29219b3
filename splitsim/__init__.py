"""splitsim: split and federated learning with malicious parties, simulated over Flower.

From Python (the same code paths as ``python -m splitsim run|attack|compare``)::

    import splitsim

    result = splitsim.run("scenarios/hidden_covid_app.yaml", set={"training.epochs": 2})
    result.metrics, result.folder
    table = splitsim.compare("scenarios/defence_matrix.yaml")
    scenario = splitsim.Scenario.from_yaml("scenarios/mnist_inversion.yaml")
    splitsim.run(scenario, set={"defences": [{"name": "nopeek", "alpha": 0.5}]})

``splitsim.ROLES``, ``DEFENCES``, ``DATASETS`` and ``MODELS`` are the registries that
``python -m splitsim list`` prints; a package of one's own adds to them through the entry-point
group ``splitsim.plugins`` (docs/plugins.md). Bad input raises ``splitsim.ScenarioError``, one
line naming the file, the field and what is allowed.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Imported on first use, not here: every Flower client actor imports this package, and the
# names below pull in torch, Flower and the scenario models.
_EXPORTS = {
    "run": "splitsim.api",
    "attack": "splitsim.api",
    "compare": "splitsim.api",
    "RunResult": "splitsim.api",
    "Comparison": "splitsim.api",
    "Scenario": "splitsim.scenario",
    "ScenarioError": "splitsim.errors",
    "RunFailed": "splitsim.errors",
    "ROLES": "splitsim.registry",
    "DEFENCES": "splitsim.registry",
    "DATASETS": "splitsim.registry",
    "MODELS": "splitsim.registry",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'splitsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
