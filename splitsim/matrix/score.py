"""The defence score: one number per cell that weighs the leakage a defence removes against the
utility it costs, so defences can be ranked per role. Defined in docs/compare.md.

Against the same role, attacker and seed without any defence (leakage L0, utility U0), and the
no-information levels of each metric (Lc: the attacker's accuracy if it guessed the most common
class; Uc: the same for the task):

    removed = clip((L0 - L) / (L0 - Lc), 0, 1)     share of the attack's advantage removed
    kept    = clip((U - Uc) / (U0 - Uc), 0, 1)     share of the task's advantage kept
    score   = 1 - sqrt(beta * (1 - removed)^2 + (1 - beta) * (1 - kept)^2)

It is one minus the (weighted) distance to the ideal point "all leakage removed, no utility lost"
in the normalised leakage-utility plane, the construction of the defence capability score of
vertical-FL benchmarks, on axes made comparable across roles by the chance levels. 1: the ideal;
doing nothing scores 1 - sqrt(beta) (0.29 at beta = 0.5), as does a defence that removes every
leak by destroying the task; 0: nothing removed and every bit of utility lost.
"""

from __future__ import annotations

import math


def _share(value: float, start: float, end: float) -> float | None:
    """Where ``value`` lies from ``start`` (0) to ``end`` (1), clipped; None if undefined."""
    if not all(math.isfinite(v) for v in (value, start, end)) or abs(end - start) < 1e-9:
        return None
    return min(1.0, max(0.0, (value - start) / (end - start)))


def defence_score(
    utility: float,
    utility_none: float,
    utility_chance: float | None,
    leakage: float,
    leakage_none: float,
    leakage_chance: float | None,
    beta: float = 0.5,
) -> dict[str, float | None]:
    """``removed``, ``kept`` and ``score`` (None where the baseline leaks nothing to remove)."""
    removed = _share(leakage, leakage_none, leakage_chance if leakage_chance is not None else 0.0)
    kept = _share(utility, utility_chance if utility_chance is not None else 0.0, utility_none)
    if removed is None or kept is None:
        return {"removed": removed, "kept": kept, "score": None}
    score = 1.0 - math.sqrt(beta * (1.0 - removed) ** 2 + (1.0 - beta) * (1.0 - kept) ** 2)
    return {"removed": removed, "kept": kept, "score": score}


def vflair_dcs(
    leakage: float, utility: float, utility_undefended: float, beta: float = 0.5
) -> float:
    """VFLAIR's Defence Capability Score (Zou et al., *VFLAIR: A Research Library and Benchmark
    for Vertical Federated Learning*, ICLR 2024; their ``src/metrics/data_process.py:
    cal_dcs``), printed beside ours so numbers can be set beside VFLAIR's tables:
    ``DCS = 1 / (1 + sqrt((1 - beta) * max(AP - 0, 0)^2 + beta * max(MP0 - MP, 0)^2))``, with
    AP the raw attack performance (our headline leakage, not relative to chance), MP the main
    task's and MP0 the undefended main task's. Unlike our score it does not subtract chance,
    so an attack at chance level still costs a defence; only the formula is comparable, not
    VFLAIR's published values (other attacks, tasks and models)."""
    d_ap = max(leakage, 0.0)
    d_mp = max(utility_undefended - utility, 0.0)
    return 1.0 / (1.0 + math.sqrt((1.0 - beta) * d_ap**2 + beta * d_mp**2))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both less leakage (x) and more utility
    (y), sorted by leakage."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])
