"""Client-side defences, one file each; see base.py for the stages they act on."""

from splitsim.defences import (  # noqa: F401
    distillation,
    dp_sgd,
    fine_tune,
    gradient_noise,
    input_noise,
    label_only,
    laplace,
    marvell,
    nopeek,
    quantise,
    query_budget,
    randomised_response,
    rounding,
    splitguard,
    update_noise,
    weight_noise,
)
from splitsim.defences.base import Defence, ScoreDefence, apply_scores, apply_stage
from splitsim.registry import DEFENCES


def build(specs: list) -> list[Defence]:
    """Scenario ``defences:`` entries -> defence objects, in order."""
    built = []
    for spec in specs:
        defence = DEFENCES.get(spec.name)(spec.params)
        defence.name = spec.name
        built.append(defence)
    return built


__all__ = ["Defence", "ScoreDefence", "apply_scores", "apply_stage", "build"]
