"""Privacy budgets of the noise defences: epsilon per release and over all of a record's releases.

A defence that is a differential-privacy mechanism states, through ``Defence.budget``, the
epsilon (and delta) of one release of one record's value and of the ``releases`` times that
value passed through it in a run. Which releases count is the role's to say, since only it
knows its protocol: each phone's scores once, an image's intermediate tensor once per epoch
it was sent, an input's label-change bit once per answered probe, a participant's update once
per round. The mechanisms and the composition used:

- Laplace mechanism (Dwork, McSherry, Nissim, Smith 2006; Dwork & Roth 2014, Def. 3.3, Thm 3.6):
  ``epsilon = Delta_1 / b`` for L1 sensitivity ``Delta_1``; composed over ``k`` releases by
  basic sequential composition (Dwork & Roth, Thm 3.16), ``k * epsilon``.
- Randomised response (Warner 1965), flipping a bit with probability ``p``:
  ``epsilon = ln((1 - p) / p)`` per answer (Dwork & Roth, section 3.2); ``k * epsilon`` over
  ``k`` answers.
- Gaussian mechanism, noise ``sigma`` on an update of L2 sensitivity ``C``: composed over the
  rounds with Opacus's Renyi-DP accountant (Mironov 2017) at sampling rate 1, and its PRV
  accountant (Gopi, Lee, Wutschitz 2021); the tighter of the two is reported, named.
- DP-SGD (Abadi et al. 2016): the same two Opacus accountants over the local steps.

papers/003 (section 4.1, Appendix C.3) frames its Laplace noise as a local differential-privacy
mechanism but states no sensitivity: without a clipping bound the payload's sensitivity is
unbounded, and the budget is reported as infinite with that reason, not left out.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

INF = float("inf")
# PRV's grid grows with epsilon (noise multiplier 2e-4 asked numpy for 66 GiB): past this RDP
# epsilon, which no one would call private, RDP's figure alone is reported.
PRV_MAX_EPSILON = 100.0


def pure(mechanism: str, per_release: float, releases: int, **facts: Any) -> dict[str, Any]:
    """An epsilon-DP mechanism released ``releases`` times: basic sequential composition."""
    total = 0.0 if releases == 0 else (INF if math.isinf(per_release) else releases * per_release)
    return {
        "mechanism": mechanism,
        "epsilon_per_release": per_release,
        "releases": releases,
        "epsilon": total,
        "delta": 0.0,
        "composition": "basic (sequential) composition: releases x epsilon",
        **facts,
    }


def accounted(
    mechanism: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
    **facts: Any,
) -> dict[str, Any]:  # fmt: skip
    """The sampled Gaussian mechanism over ``steps``: Opacus's RDP and PRV accountants, the
    tighter one reported (PRV needs a positive noise multiplier and a rate below 1 or enough
    steps to build its grid; where it fails, RDP alone)."""
    if steps == 0:
        per, total, used = 0.0, 0.0, "none (nothing released)"
    elif noise_multiplier == 0:
        per, total, used = INF, INF, "none (no noise)"
    else:
        per, _ = _tightest(noise_multiplier, sample_rate, 1, delta)
        total, used = _tightest(noise_multiplier, sample_rate, steps, delta)
    return {
        "mechanism": mechanism,
        "epsilon_per_release": per,
        "releases": steps,
        "epsilon": total,
        "delta": delta,
        "composition": used,
        "noise_multiplier": noise_multiplier,
        "sample_rate": sample_rate,
        **facts,
    }


def _tightest(noise_multiplier: float, sample_rate: float, steps: int, delta: float):  # noqa: ANN202
    from opacus.accountants import PRVAccountant, RDPAccountant

    rdp = RDPAccountant()
    rdp.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        # "optimal order is the smallest alpha": the bound is loose, and then huge anyway
        warnings.simplefilter("ignore", UserWarning)
        best = (float(rdp.get_epsilon(delta=delta)), "Opacus RDP accountant")
    if best[0] > PRV_MAX_EPSILON:
        return best
    prv = PRVAccountant()
    prv.history = [(noise_multiplier, sample_rate, steps)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # log(0) at sampling rate 1
            eps = float(prv.get_epsilon(delta=delta))
    except (ValueError, RuntimeError, OverflowError, MemoryError):
        eps = INF
    if math.isfinite(eps) and eps < best[0]:
        best = (eps, "Opacus PRV accountant (tighter than RDP here)")
    return best


def budgets(defences: list, stage: str, releases: dict[str, int], **context: Any) -> list[dict]:
    """Each ``stage`` defence's budget for every kind of record in ``releases``
    (``{"phone": 1}``, ``{"training image": 3, "test image": 1}``); defences that make no
    differential-privacy claim (rounding, NoPeek, a query budget) are left out. JSON has no
    infinity (results.json writes null), so each row also says whether its epsilon is finite."""
    rows = []
    for defence in defences:
        if defence.stage != stage:
            continue
        for record, count in releases.items():
            budget = defence.budget(int(count), **context)
            if budget is not None:
                rows.append({"defence": defence.name, "record": record, **budget,
                             "finite": math.isfinite(budget["epsilon"])})  # fmt: skip
    return rows


def describe(row: dict[str, Any]) -> str:
    """One line for a report: ``laplace on each phone: epsilon 4 per release, 4 over 1``."""

    def num(x: float | None) -> str:
        return "infinite" if x is None or math.isinf(x) else f"{x:.4g}"

    delta = f" at delta {row['delta']:g}" if row.get("delta") else ""
    why = f" ({row['unbounded']})" if row.get("unbounded") else ""
    return (
        f"{row['defence']} on each {row['record']}: epsilon {num(row['epsilon_per_release'])} "
        f"per release, {num(row['epsilon'])}{delta} over {row['releases']} "
        f"({row['composition']}){why}"
    )


def headline_epsilon(metrics: dict[str, Any]) -> float | None:
    """A run's epsilon for the comparison: the largest over its budgets (the record that
    spent most), of the configured pass where a role compares passes; ``inf`` when one is
    unbounded, None when no defence of the run is a differential-privacy mechanism."""
    rows = metrics.get("privacy")
    if rows is None and metrics.get("sessions"):
        rows = metrics["sessions"][0].get("privacy")
    if not rows:
        return None
    return max(INF if not r.get("finite", True) or r["epsilon"] is None else r["epsilon"]
               for r in rows)  # fmt: skip


def epsilon_text(value: float | None) -> str:
    """A cell's epsilon in a table: blank without a mechanism, "inf" when unbounded."""
    if value is None:
        return ""
    return "inf" if math.isinf(value) else f"{value:.4g}"
