"""The audit of one supplied model: can what it releases tell a sensitive attribute better than
what an honest model releases?

Answers papers/001's closing call for defences against hidden learning and papers/002's
"we have no way to measure what an ML model has learned from its training data" for the one
thing a deployment can check from outside: what the model's outputs carry.

1. The auditor's records are halved (a fixed permutation): the first half trains ``references``
   honest networks (``reference.train_reference``), the second is decoded.
2. On the decoding half, the supplied model and every reference release their scores; for each
   sensitive attribute a decoder reads scores and side fields, cross-fitted over ``folds``
   (``leakage.out_of_fold``); the excess of the supplied model's accuracy over the references'
   gets an interval from both the records and the references' spread (``leakage.excess_leakage``).
3. Both models' official accuracy, AUC and calibration on the same half (``quality``).

The verdict per attribute: "more" when the whole interval is above zero, "less" when below,
"no evidence" otherwise.

    >>> result = audit(net, data, lambda: MODELS.get("health_mlp").build(...), seed=0)
    >>> result["sensitive"]["insurer"]["excess"], result["sensitive"]["insurer"]["interval"]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from splitsim.audit import leakage
from splitsim.audit.data import AuditData, split_halves
from splitsim.audit.model import Release, released
from splitsim.audit.quality import quality
from splitsim.audit.reference import train_reference
from splitsim.metrics import majority_rate

Progress = Callable[[str], None]


def verdict(interval: tuple[float, float] | list[float]) -> str:
    lo, hi = interval
    if lo > 0:
        return "more"
    if hi < 0:
        return "less"
    return "no evidence"


def sentence(name: str, cell: dict) -> str:
    """The verdict as a reader wants it, e.g. for the console and report.md."""
    lo, hi = (100 * v for v in cell["interval"])
    x = 100 * cell["excess"]
    if cell["verdict"] == "more":
        head = f"the supplied model releases {x:.1f} points more about `{name}` than an honest one"
    elif cell["verdict"] == "less":
        head = f"the supplied model releases {-x:.1f} points less about `{name}` than an honest one"
    else:
        head = f"no evidence that the supplied model releases more about `{name}` ({x:+.1f} points)"
    return f"{head} (95 % interval [{lo:+.1f}, {hi:+.1f}])"


def audit(
    model: nn.Module,
    data: AuditData,
    build_reference: Callable[[], nn.Module],
    *,
    release: Release = "probabilities",
    seed: int = 0,
    references: int = 5,
    folds: int = 5,
    reference_epochs: int = 30,
    progress: Progress = lambda _: None,
) -> dict[str, Any]:
    """The audit's numbers (JSON-ready) plus, under ``"plots"``, the arrays report.py draws."""
    if references < 3:
        raise ValueError("references: at least 3; their spread is half of the interval")
    model.eval()
    _check_outputs(data, released(model, data.x[:2], data.kind, release).shape[1])
    fit, decode = split_halves(len(data), seed)
    train, held = data.subset(fit), data.subset(decode)
    nets = []
    for r in range(references):
        progress(f"training honest reference {r + 1}/{references}")
        nets.append(
            train_reference(build_reference, train, seed=seed, index=r, epochs=reference_epochs)
        )
    released_by = {"supplied": released(model, held.x, data.kind, release)}
    for r, net in enumerate(nets):
        released_by[f"reference {r}"] = released(net, held.x, data.kind, release)
    prob_supplied = released(model, held.x, data.kind, "probabilities")
    prob_reference = released(nets[0], held.x, data.kind, "probabilities")

    sensitive: dict[str, Any] = {}
    for name, y in held.sensitive.items():
        progress(f"decoding {name}")
        split = leakage.folds_of(y, folds, seed)
        correct = {
            which: leakage.out_of_fold(np.hstack([scores, held.side]), y, split, seed) == y
            for which, scores in released_by.items()
        }
        excess = leakage.excess_leakage(
            correct["supplied"], [correct[f"reference {r}"] for r in range(references)], seed
        )
        side_only = (
            float(np.mean(leakage.out_of_fold(held.side, y, split, seed) == y))
            if held.side.shape[1]
            else None
        )
        cell = {
            **excess.as_dict(),
            "verdict": verdict(excess.interval),
            "chance": majority_rate(y),
            "side_only": side_only,
            "classes": list(data.classes[name]),
        }
        cell["sentence"] = sentence(name, cell)
        sensitive[name] = cell
    official = {
        "supplied": quality(prob_supplied, held.official, data.kind, data.official_names),
        "reference": quality(prob_reference, held.official, data.kind, data.official_names),
    }
    return {
        "records": {"total": len(data), "reference_training": len(fit), "decoded": len(decode)},
        "release": release,
        "references": references,
        "folds": folds,
        "seed": seed,
        "sensitive": sensitive,
        "official": official,
        "plots": {
            "scores": {
                "supplied": released_by["supplied"],
                "reference": released_by["reference 0"],
            },
            "sensitive": dict(held.sensitive),
            "classes": {k: list(v) for k, v in data.classes.items()},
            "official_names": list(data.official_names),
        },
    }


def _check_outputs(data: AuditData, outputs: int) -> None:
    from splitsim.errors import ScenarioError

    if data.kind == "multilabel" and outputs != data.official.shape[1]:
        raise ScenarioError(
            data.source,
            "--official",
            f"{data.official.shape[1]} label columns for a model with {outputs} outputs",
        )
    if data.kind == "multiclass" and data.official.max() >= outputs:
        raise ScenarioError(
            data.source,
            f"--official {data.official_names[0]}",
            f"class {int(data.official.max())} for a model with {outputs} outputs"
            f"; allowed: 0..{outputs - 1}",
        )
