"""What every defence is: a transform the data owner applies at one stage of its computation.

Stages: ``payload`` (what leaves the client: scores, intermediate tensors), ``weights`` (the
model the client received, before it runs it), ``loss`` (a term the data owner adds to its own
training loss, e.g. NoPeek); for a data owner answering probes (papers/004): ``input`` (its
secret input, before each query is evaluated), ``answer`` (the label-change bit it returns) and
``budget`` (how many queries it answers); for a participant of federated training (papers/002):
``update`` (the model update it uploads) and ``training`` (how it runs its local optimiser, e.g.
DP-SGD); for the label holder of split learning (Li et al., ICLR 2022): ``gradient`` (the
gradient it returns to a data owner, perturbed knowing the batch's labels; the one stage a
server applies); for a split-learning data owner that watches the server (Erdoğan et al., WPES
2022): ``detector`` (fake batches and a test on the gradients it gets back, stopping training
when the server looks hijacked); for a data owner that releases a model it trained with a
supplier's code (Song et al., CCS 2017): ``release`` (what it does to the trained model before
publishing or serving it, e.g. fine-tuning on its own data); for a data owner that runs a
supplier's model on its users' records and releases the scores (papers/001): ``model`` (its
treatment of the received model with its own inputs before it runs it, e.g. distilling a fresh
network from the model's answers) and ``scores`` (what it makes of the official task's scores
before they leave, knowing the task: its top-1 class only, scores on k levels; a ``payload``
defence acts on any tensor, a ``scores`` one on a model's answers to a task the role names). A
role declares which stages it has; a defence whose stage a role lacks is refused when the
scenario is loaded, never silently ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from splitsim.data.score_data import OfficialTask

Stage = Literal[
    "payload",
    "weights",
    "loss",
    "input",
    "answer",
    "budget",
    "update",
    "training",
    "gradient",
    "detector",
    "release",
    "model",
    "scores",
]


class DefenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Defence:
    stage: ClassVar[Stage]
    Params: ClassVar[type[DefenceParams]]
    name: str = ""  # the scenario's name for it (set by ``defences.build``)

    def __init__(self, params: DefenceParams) -> None:
        self.params = params

    def budget(self, releases: int, **context: Any) -> dict[str, Any] | None:
        """The privacy budget when one record's value passes through this defence
        ``releases`` times (``splitsim/defences/privacy.py``); None for a defence that is not
        a differential-privacy mechanism. ``context``: what the mechanism needs from the role
        (``size``, the number of values released; ``sample_rate`` for DP-SGD)."""
        return None

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return the defended copy of ``values`` (a payload, or one weight tensor)."""
        raise NotImplementedError


class GradientDefence(Defence):
    """A ``gradient`` defence: the label holder perturbs the batch's gradient knowing its
    labels, and keeps a summary of what it did for the run's results."""

    stage: ClassVar[Stage] = "gradient"

    def protect(self, g: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The perturbed copy of ``g`` (one row per example) for labels ``y``."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """JSON data on the batches it perturbed (noise power, bounds it guarantees)."""
        return {}


class ScoreDefence(Defence):
    """A ``scores`` defence: what it releases depends on the official task (one class of a
    multiclass task, a bit per label of a multilabel one), which the role passes to
    ``release``; a task it cannot act on is refused by the role's ``check`` (``refuses``)."""

    stage: ClassVar[Stage] = "scores"

    def refuses(self, task: OfficialTask) -> str | None:
        """Why this defence cannot act on ``task``'s released scores; None when it can."""
        return None

    def release(
        self, scores: np.ndarray, task: OfficialTask, rng: np.random.Generator
    ) -> np.ndarray:
        """The defended copy of ``scores`` (n, k_o), as ``task`` releases them."""
        raise NotImplementedError

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # without the task a top-1 or a threshold would be a guess: refuse rather than guess
        raise TypeError(
            f"{self.name or type(self).__name__} needs the official task; use release()"
        )


def apply_scores(
    defences: list[Defence], scores: np.ndarray, task: OfficialTask, rng: np.random.Generator
) -> np.ndarray:
    """Apply, in scenario order, the ``scores`` defences to a model's released scores."""
    for defence in defences:
        if isinstance(defence, ScoreDefence):
            scores = defence.release(scores, task, rng)
    return scores


def apply_stage(
    defences: list[Defence], stage: Stage, values: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Apply, in scenario order, the defences of one stage."""
    for defence in defences:
        if defence.stage == stage:
            values = defence.apply(values, rng)
    return values
