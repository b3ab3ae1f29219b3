"""Marvell: the label holder's optimised gradient noise (Li et al., ICLR 2022, section 5).

Li, Sun, Yang, Gao, Zhang, Xie, Smith, Wang, *Label Leakage and Protection in Two-party Split
Learning*. For a binary task, per batch, the server models the cut-layer gradients of class 0
and class 1 as isotropic Gaussians ``N(g0, u I)`` and ``N(g1, v I)`` (the batch's class means and
mean coordinate variances) and adds class-dependent noise ``N(0, Sigma_k)`` to each example of
class k. It chooses the covariances that minimise the symmetrised KL divergence between the two
perturbed distributions (their eq. 4)

    sumKL = KL(P1 || P0) + KL(P0 || P1)

under the power constraint ``p tr(Sigma_1) + (1 - p) tr(Sigma_0) <= P`` (p: the batch's share of
class 1). The optimum lies in ``Sigma_k = (l1k - l2k) / ||D||^2 D D^T + l2k I`` with
``D = g1 - g0`` (their Theorem 2), so four numbers are solved for; with
``g = ||D||^2`` (their appendix)

    2 sumKL + 2d = (d-1)(l20+u)/(l21+v) + (d-1)(l21+v)/(l20+u)
                   + (l10+u+g)/(l11+v) + (l11+v+g)/(l10+u).

The power is ``P = scale * ||D||^2`` (the paper's s). By Pinsker's inequality any detector the
data owner builds from one perturbed gradient has ``(FPR + FNR) / 2 >= 1/2 - sqrt(sumKL) / 4``;
``summary()`` reports that bound. The four-variable problem is solved here with SciPy's SLSQP
(the authors alternate over one variable at a time); the solution is checked against the power
constraint. A batch holding one class only has no ``D`` to hide and is returned unperturbed
(counted in the summary).

    >>> Marvell(Marvell.Params(scale=4.0)).protect(g, y, rng)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from splitsim.defences.base import DefenceParams, GradientDefence
from splitsim.registry import DEFENCES


def sum_kl(lam: np.ndarray, u: float, v: float, d: int, g: float) -> float:
    """The symmetrised KL divergence of the perturbed classes for ``lam = (l10, l20, l11, l21)``."""
    l10, l20, l11, l21 = lam
    a0, a1 = l20 + u, l21 + v  # orthogonal variances, class 0 and 1
    b0, b1 = l10 + u, l11 + v  # variances along D
    total = (d - 1) * (a0 / a1 + a1 / a0) + (b0 + g) / b1 + (b1 + g) / b0
    return 0.5 * total - d


def solve(u: float, v: float, d: int, g: float, p: float, power: float) -> tuple[np.ndarray, float]:
    """The noise variances ``(l10, l20, l11, l21)`` minimising sumKL under the power ``power``,
    and that sumKL."""
    from scipy.optimize import minimize  # here: every actor imports this module, few solve

    # Scaled so that the variables are of order one whatever the gradients' magnitude.
    unit = power
    uu, vv, gg = u / unit, v / unit, g / unit

    def objective(x: np.ndarray) -> float:
        return sum_kl(x, uu + 1e-12, vv + 1e-12, d, gg)

    def spent(x: np.ndarray) -> float:
        return 1.0 - (p * (x[2] + (d - 1) * x[3]) + (1 - p) * (x[0] + (d - 1) * x[1]))

    starts = [
        np.full(4, 1.0 / d),  # isotropic, the same for both classes
        np.array([1.0, 0.0, 1.0, 0.0]),  # all along D
        np.array([0.0, 0.0, 1.0 / p, 0.0]),  # all on class 1
        np.array([1.0 / (1 - p), 0.0, 0.0, 0.0]),  # all on class 0
    ]
    best_x, best = np.zeros(4), objective(np.zeros(4))
    for start in starts:
        found = minimize(objective, start, method="SLSQP", bounds=[(0.0, None)] * 4,
                         constraints=[{"type": "ineq", "fun": spent}],
                         options={"maxiter": 200, "ftol": 1e-12})  # fmt: skip
        x = np.clip(found.x, 0.0, None)
        if spent(x) < -1e-6:  # over the power budget: scale back onto it
            x = x / (1.0 - spent(x))
        value = objective(x)
        if value < best:
            best_x, best = x, value
    return best_x * unit, best


@DEFENCES.register("marvell")
class Marvell(GradientDefence):
    """Class-dependent Gaussian noise that minimises the sumKL between the two labels' gradients."""

    class Params(DefenceParams):
        scale: float = Field(
            gt=0, le=1e4, description="power constraint P as a multiple of ||g1 - g0||^2 (s)"
        )
        positive: int = Field(1, ge=0, le=1, description="the label of class 1")

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self._kl: list[float] = []
        self._power: list[float] = []
        self.single_class = 0

    def protect(self, g: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flat = g.reshape(len(g), -1).astype(np.float64)
        pos = np.asarray(y) == self.params.positive
        if pos.all() or not pos.any():
            self.single_class += 1
            return g
        d = flat.shape[1]
        g1, g0 = flat[pos].mean(0), flat[~pos].mean(0)
        v = float(((flat[pos] - g1) ** 2).mean())
        u = float(((flat[~pos] - g0) ** 2).mean())
        diff = g1 - g0
        gap = float(diff @ diff)
        if gap == 0.0:
            self.single_class += 1
            return g
        power = self.params.scale * gap
        (l10, l20, l11, l21), kl = solve(u, v, d, gap, float(pos.mean()), power)
        self._kl.append(kl)
        self._power.append(power)
        unit = diff / math.sqrt(gap)
        along = np.where(pos, math.sqrt(l11), math.sqrt(l10))
        across = np.where(pos, math.sqrt(l21), math.sqrt(l20))
        noise = rng.normal(0.0, 1.0, flat.shape)
        # Orthogonal part: standard noise with its component along D removed, then scaled.
        ortho = noise - np.outer(noise @ unit, unit)
        out = flat + across[:, None] * ortho
        out += (along * rng.normal(0.0, 1.0, len(flat)))[:, None] * unit
        return out.astype(g.dtype).reshape(g.shape)

    def summary(self) -> dict[str, Any]:
        kl = np.asarray(self._kl)
        return {
            "batches": len(kl),
            "single_class_batches": self.single_class,
            "mean_sum_kl": float(kl.mean()) if len(kl) else 0.0,
            "median_sum_kl": float(np.median(kl)) if len(kl) else 0.0,
            "max_sum_kl": float(kl.max()) if len(kl) else 0.0,
            # Pinsker: (FPR + FNR) / 2 of any detector of one gradient, at the worst batch
            "error_lower_bound": float(max(0.0, 0.5 - math.sqrt(kl.max()) / 4)) if len(kl) else 0.5,
            "mean_power": float(np.mean(self._power)) if self._power else 0.0,
        }
