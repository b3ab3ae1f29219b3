"""A per-input query budget: the data owner answers at most ``queries`` probes of one input.

Against papers/004's adversary, whose signature of one input costs tens of queries per
direction (bracketing, then bisection): after the budget the data owner refuses, so the
adversary must settle directions where they stand (the signature is coarser, or missing).
An honest user needs one evaluation per input, so the budget costs it nothing.

    >>> QueryBudget(QueryBudget.Params(queries=500)).allowed(spent, asked)
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from splitsim.defences.base import Defence, DefenceParams
from splitsim.registry import DEFENCES


@DEFENCES.register("query_budget")
class QueryBudget(Defence):
    """Refuse every probe of an input beyond ``queries`` answered ones."""

    stage = "budget"

    class Params(DefenceParams):
        queries: int = Field(ge=1, description="probes answered per input")

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise TypeError("a budget does not transform values; use allowed()")

    def allowed(self, spent: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """Which of these queries (on ``inputs``, in order) fit the budget; updates ``spent``."""
        order = np.argsort(inputs, kind="stable")  # the first queries of an input are answered
        sorted_inputs = inputs[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_inputs)) + 1]
        rank = np.arange(len(inputs)) - np.repeat(starts, np.diff(np.r_[starts, len(inputs)]))
        ok = np.empty(len(inputs), dtype=bool)
        ok[order] = spent[sorted_inputs] + rank < self.params.queries
        np.add.at(spent, inputs[ok], 1)
        return ok
