"""Client-side defences, one file each; see base.py for the stages they act on."""

from splitsim.defences import (  # noqa: F401
    dp_sgd,
    fine_tune,
    gradient_noise,
    input_noise,
    laplace,
    marvell,
    nopeek,
    query_budget,
    randomised_response,
    rounding,
    splitguard,
    update_noise,
    weight_noise,
)
from splitsim.defences.base import Defence, apply_stage
from splitsim.registry import DEFENCES


def build(specs: list) -> list[Defence]:
    """Scenario ``defences:`` entries -> defence objects, in order."""
    built = []
    for spec in specs:
        defence = DEFENCES.get(spec.name)(spec.params)
        defence.name = spec.name
        built.append(defence)
    return built


__all__ = ["Defence", "apply_stage", "build"]
