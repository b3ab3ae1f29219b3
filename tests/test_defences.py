import numpy as np
import pytest

from splitsim.defences import apply_stage
from splitsim.defences.laplace import Laplace
from splitsim.defences.rounding import Rounding
from splitsim.defences.weight_noise import WeightNoise


def test_laplace_noise_has_the_requested_scale():
    rng = np.random.default_rng(0)
    x = np.full((200_000,), 0.3, dtype=np.float32)
    noisy = Laplace(Laplace.Params(scale=0.2)).apply(x, rng)
    assert noisy.dtype == np.float32
    # For Laplace(0, b): E|n| = b and Var n = 2 b^2.
    assert np.mean(np.abs(noisy - x)) == pytest.approx(0.2, rel=0.01)
    assert np.var(noisy - x) == pytest.approx(2 * 0.04, rel=0.02)
    assert np.array_equal(Laplace(Laplace.Params(scale=0)).apply(x, rng), x)


def test_rounding_keeps_the_requested_decimals():
    x = np.array([[0.123456, 0.987654]], dtype=np.float32)
    out = Rounding(Rounding.Params(decimals=2)).apply(x, np.random.default_rng(0))
    assert np.allclose(out, [[0.12, 0.99]])


def test_weight_noise_std_is_sigma():
    w = np.zeros((500, 400), dtype=np.float32)
    out = WeightNoise(WeightNoise.Params(sigma=0.05)).apply(w, np.random.default_rng(1))
    assert out.std() == pytest.approx(0.05, rel=0.01)


def test_stages_apply_only_their_own_defences_in_order():
    chain = [Rounding(Rounding.Params(decimals=1)), WeightNoise(WeightNoise.Params(sigma=1.0))]
    x = np.array([0.44, 0.46], dtype=np.float32)
    out = apply_stage(chain, "payload", x, np.random.default_rng(0))
    assert np.allclose(out, [0.4, 0.5])  # weight noise not applied to the payload
