"""Label-only release: the data owner sends the official task's answer, not its scores.

Shokri, Stronati, Song, Shmatikov (*Membership Inference Attacks Against Machine Learning
Models*, IEEE S&P 2017, section VI, "Mitigation strategies") restrict the prediction vector a
model releases to its top k classes; label-only is their k = 1. Here, as the official task
defines an answer:

- multiclass: the one-hot vector of the top-1 class, ``s'_j = [j = argmax_i s_i]``;
- multilabel (one sigmoid score per label, e.g. the Covid app's two): each label's decision,
  ``s'_j = [s_j >= 0.5]``, the threshold the task's accuracy is measured with.

Against hidden learning (papers/001) it leaves the secret network only what the official
answers carry: the task itself is untouched (the released answer is the one the scores gave),
while every bit the supplier hid inside a decision region is gone.

    >>> LabelOnly(LabelOnly.Params()).release(scores, task, rng)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from splitsim.defences.base import DefenceParams, ScoreDefence
from splitsim.registry import DEFENCES

if TYPE_CHECKING:
    from splitsim.data.score_data import OfficialTask


@DEFENCES.register("label_only")
class LabelOnly(ScoreDefence):
    """Release the official answer only: the top-1 class one-hot, or a 0/1 per label."""

    class Params(DefenceParams):
        pass

    def refuses(self, task: OfficialTask) -> str | None:
        if task.kind == "multilabel" and task.released == "logits":
            # a 0 or 1 read back as a logit would decide every label positive
            return (
                "has no 0/1 answer for a multilabel task released as logits "
                "(tasks.released: probabilities to use it)"
            )
        return None

    def release(
        self, scores: np.ndarray, task: OfficialTask, rng: np.random.Generator
    ) -> np.ndarray:
        if task.kind == "multilabel":
            return (scores >= 0.5).astype(scores.dtype)
        out = np.zeros_like(scores)
        out[np.arange(len(scores)), scores.argmax(axis=1)] = 1
        return out
