"""Output quantisation: each released score on one of k evenly spaced levels of [0, 1].

Shokri, Stronati, Song, Shmatikov (*Membership Inference Attacks Against Machine Learning
Models*, IEEE S&P 2017, section VI) coarsen the precision of the prediction vector a model
releases; Tramèr et al. (*Stealing Machine Learning Models via Prediction APIs*, USENIX
Security 2016, section 8) round confidences against extraction. Both round to d decimals,
splitsim's ``rounding``; this defence instead keeps ``levels`` = k values,

    s' = floor(s (k - 1) + 1/2) / (k - 1),   s clipped to [0, 1],

so each score carries at most log2(k) bits: k = 2 is the 0.5 threshold, k = 3 adds "unsure"
(0.5), k = 11 is one decimal. Ties go up (floor(x + 1/2)), so k = 2 decides a multilabel label
exactly as the task's accuracy does (s >= 0.5).

    >>> Quantise(Quantise.Params(levels=3)).release(scores, task, rng)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from splitsim.defences.base import DefenceParams, ScoreDefence
from splitsim.registry import DEFENCES

if TYPE_CHECKING:
    from splitsim.data.score_data import OfficialTask


@DEFENCES.register("quantise")
class Quantise(ScoreDefence):
    """Every released probability moved to the nearest of k levels 0, 1/(k-1), ..., 1."""

    class Params(DefenceParams):
        levels: int = Field(ge=2, le=1_000_000, description="k, the levels on [0, 1] (2: 0 or 1)")

    def refuses(self, task: OfficialTask) -> str | None:
        if task.released == "logits":
            return (
                "quantises probabilities on [0, 1]; this task releases logits "
                "(tasks.released: probabilities to use it)"
            )
        return None

    def release(
        self, scores: np.ndarray, task: OfficialTask, rng: np.random.Generator
    ) -> np.ndarray:
        steps = self.params.levels - 1
        clipped = np.clip(scores.astype(np.float64), 0.0, 1.0)
        return (np.floor(clipped * steps + 0.5) / steps).astype(scores.dtype)
