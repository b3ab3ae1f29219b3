"""Privacy budgets of the noise defences, checked by hand against the mechanisms' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from splitsim.defences import build
from splitsim.defences.laplace import Laplace, clip_rows
from splitsim.defences.privacy import budgets, describe


def specs(*entries: dict) -> list:
    from splitsim.scenario import validate

    data = {"dataset": {"name": "fashion_mnist"}, "role": {"name": "property_inference"},
            "defences": list(entries)}  # fmt: skip
    return validate(data, "test").defences


def test_laplace_with_a_clip_is_2c_over_b_per_release_and_adds_up():
    (budget,) = budgets([Laplace(Laplace.Params(scale=0.5, clip=1.0))], "payload", {"phone": 3})
    # Laplace mechanism: Delta_1 / b with Delta_1 = 2c (two payloads of L1 norm <= c)
    assert budget["epsilon_per_release"] == pytest.approx(2 * 1.0 / 0.5) == 4.0
    assert budget["epsilon"] == pytest.approx(12.0) and budget["finite"]
    values = np.array([[3.0, -1.0], [0.2, 0.1]], dtype=np.float32)
    clipped = clip_rows(values, 1.0)
    assert np.abs(clipped).sum(1) == pytest.approx([1.0, 0.3])  # only the long row shrinks
    assert clipped[0] == pytest.approx([0.75, -0.25])


def test_laplace_without_a_clip_has_no_finite_epsilon():
    (budget,) = budgets([Laplace(Laplace.Params(scale=0.5))], "payload", {"phone": 1})
    assert math.isinf(budget["epsilon"]) and not budget["finite"]
    assert "no clip" in budget["unbounded"]
    line = describe({**budget, "defence": "laplace"})
    assert line.startswith("laplace on each phone: epsilon infinite per release, infinite over 1")
    assert line.endswith("(no clip: the payload's sensitivity is unbounded)")


def test_randomised_response_is_log_odds_per_answer():
    from splitsim.defences.randomised_response import RandomisedResponse

    for p, per in ((0.1, math.log(9)), (0.5, 0.0), (0.25, math.log(3))):
        (b,) = budgets([RandomisedResponse(RandomisedResponse.Params(p=p))], "answer",
                       {"input": 40})  # fmt: skip
        assert b["epsilon_per_release"] == pytest.approx(per)
        assert b["epsilon"] == pytest.approx(40 * per)
    (never,) = budgets([RandomisedResponse(RandomisedResponse.Params(p=0.0))], "answer",
                       {"input": 1})  # fmt: skip
    assert not never["finite"]


def gaussian_exact_epsilon(mu: float, delta: float) -> float:
    """The Gaussian mechanism's exact (epsilon, delta) curve (Balle & Wang 2018, Thm 8):
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), mu = sensitivity / sigma."""

    def gap(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(gap, 0.0, 100.0)


def test_gaussian_update_noise_lies_between_the_exact_curve_and_the_classic_bound():
    from splitsim.defences.update_noise import UpdateNoise

    noise = UpdateNoise(UpdateNoise.Params(mechanism="gaussian", scale=10.0, clip=2.0, delta=1e-5))
    (one,) = budgets([noise], "update", {"participant": 1})
    mu = 2.0 / 10.0
    exact = gaussian_exact_epsilon(mu, 1e-5)
    classic = mu * math.sqrt(2 * math.log(1.25 / 1e-5))  # Dwork & Roth Thm A.1 (eps < 1)
    assert exact <= one["epsilon"] <= classic, (exact, one["epsilon"], classic)
    assert one["epsilon"] == pytest.approx(exact, rel=0.15)
    # ten rounds compose to one Gaussian of sensitivity sqrt(10) C: the exact curve again
    (ten,) = budgets([noise], "update", {"participant": 10})
    exact10 = gaussian_exact_epsilon(mu * math.sqrt(10), 1e-5)
    assert exact10 <= ten["epsilon"] <= 10 * one["epsilon"]
    assert ten["epsilon"] == pytest.approx(exact10, rel=0.15)


def test_laplace_update_noise_uses_the_l1_radius_of_the_l2_ball():
    from splitsim.defences.update_noise import UpdateNoise

    noise = UpdateNoise(UpdateNoise.Params(mechanism="laplace", scale=0.5, clip=1.0))
    (b,) = budgets([noise], "update", {"participant": 4}, size=100)
    assert b["epsilon_per_release"] == pytest.approx(math.sqrt(100) * 1.0 / 0.5) == 20.0
    assert b["epsilon"] == pytest.approx(80.0)


def test_dp_sgd_reports_the_tighter_of_opacus_rdp_and_prv():
    from opacus.accountants import RDPAccountant

    from splitsim.defences.dp_sgd import DPSGD

    dp = DPSGD(DPSGD.Params(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5))
    (b,) = budgets([dp], "training", {"participant": 480}, sample_rate=0.125)
    rdp = RDPAccountant()
    rdp.history = [(1.0, 0.125, 480)]
    assert b["epsilon"] <= rdp.get_epsilon(1e-5) + 1e-9
    assert "PRV" in b["composition"] and b["epsilon"] == pytest.approx(21.03, abs=0.05)


def test_defences_that_are_not_mechanisms_have_no_budget():
    chosen = build(specs({"name": "update_noise", "scale": 0.1, "clip": 1.0},
                         {"name": "dp_sgd", "noise_multiplier": 1.0}))  # fmt: skip
    assert [d.name for d in chosen] == ["update_noise", "dp_sgd"]
    rows = budgets(chosen, "update", {"participant": 2}, size=10)
    assert [r["defence"] for r in rows] == ["update_noise"]
    from splitsim.defences.rounding import Rounding

    assert Rounding(Rounding.Params(decimals=2)).budget(1) is None
