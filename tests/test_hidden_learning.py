"""Hidden learning on small data: the joint training beats the black-box baseline."""

import math

import numpy as np
import pytest

from splitsim.data.health_records import CovidHealthRecords
from splitsim.models.mlp import mlp
from splitsim.roles.hidden_learning.attack import regime_metrics, train_supplier


def test_regimes_order_as_in_the_paper():
    ds = CovidHealthRecords(
        CovidHealthRecords.Params(train_records=6000, test_records=3000), seed=0
    )
    train, test = ds.supplier_train(), ds.supplier_test()
    secrets = ["cv_risk", "insurer"]
    models = train_supplier(
        train,
        ds.spec.official,
        secrets,
        {name: len(ds.spec.secret_classes[name]) for name in secrets},
        lambda: mlp(train.x.shape[1], [32, 32], 2),
        lambda n_in, n_out: mlp(n_in, [16, 32], n_out),
        epochs=12,
        batch_size=64,
        lr=1e-3,
        validation_fraction=0.1,
        seed=0,
        on_epoch=lambda _: None,
    )
    m = regime_metrics(models, test, secrets)
    cv = m["secrets"]["cv_risk"]
    # Hidden learning recovers the secret far better than the black-box attacker ...
    assert cv["to_and_ts"] >= cv["to_then_ts"] + 0.15, cv
    # ... close to the upper bound, and both well above chance.
    assert cv["to_and_ts"] >= cv["ts_only"] - 0.08, cv
    assert cv["to_then_ts"] > cv["chance"]
    ins = m["secrets"]["insurer"]
    assert ins["ts_only"] > ins["chance"] + 0.15, ins
    # The hidden network still does the official job (small data: a looser bound than 2 points).
    hidden, honest = m["official"]["hidden"]["accuracy"], m["official"]["honest"]["accuracy"]
    assert hidden > 0.8 and honest - hidden < 0.05, (hidden, honest)
    assert 1 <= m["best_epoch"]["to_and_ts"] <= 12


def test_released_scores_are_logits_or_probabilities():
    """What leaves N_o: the paper's R^k_o logits keep two numbers of a two-class N_o, the
    softmax keeps one (its rows sum to 1); official predictions agree either way."""
    import dataclasses

    import numpy as np
    import torch

    from splitsim.data.score_data import OfficialTask
    from splitsim.roles.hidden_learning.scores import ScoreNet, official_quality

    torch.manual_seed(0)
    body = mlp(4, [8], 2)
    x, y = torch.randn(64, 4), np.arange(64) % 2
    probs_task = OfficialTask(kind="multiclass", names=("a", "b"))
    logits_task = dataclasses.replace(probs_task, released="logits")
    with torch.no_grad():
        probs = ScoreNet(body, probs_task).scores(x).numpy()
        logits = ScoreNet(body, logits_task).scores(x).numpy()
        raw = body(x).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(logits, raw)
    assert np.ptp(logits.sum(axis=1)) > 0.01  # the sum of the logits is a second number
    assert official_quality(probs, y, probs_task) == official_quality(logits, y, logits_task)
    multilabel = OfficialTask(kind="multilabel", names=("a", "b"), released="logits")
    flags = official_quality(np.array([[-0.1, 0.2]]), np.array([[0, 1]]), multilabel)
    assert flags["accuracy"] == 1.0  # logits are thresholded at 0, probabilities at 0.5


def test_black_box_regime_leaves_the_honest_network_untouched():
    """To-then-Ts trains N_s on a frozen N_o's scores (computed once, not every epoch): N_o's
    weights stay bit-identical, the secret still learns, and asking to train a frozen N_o on
    the official loss is refused."""
    import pytest
    import torch

    from splitsim.metrics import accuracy, majority_rate
    from splitsim.roles.hidden_learning.attack import train_regime
    from splitsim.roles.hidden_learning.scores import ScoreNet, predict_scores, predict_secret

    ds = CovidHealthRecords(
        CovidHealthRecords.Params(train_records=3000, test_records=1000), seed=0
    )
    train, test = ds.supplier_train(), ds.supplier_test()
    task = ds.spec.official
    torch.manual_seed(0)
    official = ScoreNet(mlp(train.x.shape[1], [32, 32], 2), task)
    common = dict(epochs=3, batch_size=64, lr=1e-3, seed=0, on_epoch=lambda _: None)
    honest = train_regime(
        official, {}, train, test, task, official_loss_on=True, official_frozen=False, **common
    ).official
    before = {k: v.clone() for k, v in honest.state_dict().items()}
    n_in = task.outputs + train.side.shape[1]
    secret = {"cv_risk": mlp(n_in, [16, 32], len(ds.spec.secret_classes["cv_risk"]))}
    trained = train_regime(
        honest, secret, train, test, task, official_loss_on=False, official_frozen=True, **common
    )
    for k, v in trained.official.state_dict().items():
        assert torch.equal(v, before[k]), k
    scores = predict_scores(trained.official, test.x)
    truth = test.secrets["cv_risk"]
    acc = accuracy(predict_secret(trained.secrets["cv_risk"], scores, test.side), truth)
    assert acc > majority_rate(truth) + 0.04, (acc, majority_rate(truth))
    with pytest.raises(ValueError, match="frozen"):
        train_regime(
            honest, {}, train, test, task, official_loss_on=True, official_frozen=True, **common
        )


def test_roc_auc_is_scikit_learns_with_ties_and_any_two_labels():
    from sklearn.metrics import roc_auc_score

    from splitsim.metrics import roc_auc

    for seed in range(30):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(5, 3000))
        truth = rng.integers(0, 2, n) + int(rng.integers(0, 3))  # {0,1}, {1,2} or {2,3}
        score = np.round(rng.random(n), int(rng.integers(1, 4))).astype(np.float32)  # ties
        if len(np.unique(truth)) < 2:
            continue
        assert roc_auc(truth, score) == pytest.approx(roc_auc_score(truth, score), abs=1e-12)
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert math.isnan(roc_auc(np.ones(5), np.arange(5.0)))
    with pytest.raises(ValueError):
        roc_auc(np.array([0, 1]), np.array([0.2, np.nan]))


def test_weight_noise_at_sigma_0_is_the_network_itself_scored_once():
    """Table 2's rows: sigma 0 is the unperturbed network, scored once for all its
    injections; a positive sigma averages its own seeded draws, as before."""
    from unittest import mock

    from splitsim.metrics import accuracy
    from splitsim.roles.hidden_learning import attack
    from splitsim.roles.hidden_learning.scores import predict_scores, predict_secret

    ds = CovidHealthRecords(CovidHealthRecords.Params(train_records=2000, test_records=500), 0)
    train, test = ds.supplier_train(), ds.supplier_test()
    n = len(ds.spec.secret_classes["cv_risk"])
    models = train_supplier(
        train, ds.spec.official, ["cv_risk"], {"cv_risk": n},
        lambda: mlp(train.x.shape[1], [32, 32], 2), lambda a, b: mlp(a, [16, 32], b),
        epochs=1, batch_size=64, lr=1e-3, validation_fraction=0.1, seed=0,
        on_epoch=lambda _: None, baselines=False,
    )  # fmt: skip
    scores = predict_scores(models.hidden.official, test.x)
    secret = accuracy(
        predict_secret(models.hidden.secrets["cv_risk"], scores, test.side), test.secrets["cv_risk"]
    )
    with mock.patch.object(attack, "predict_scores", wraps=attack.predict_scores) as scored:
        rows = attack.weight_noise_robustness(models, test, "cv_risk", [0.0, 0.5], 4, seed=3)
    assert scored.call_count == 1 + 4
    assert rows[0]["secret_mean"] == pytest.approx(secret) and rows[0]["secret_std"] == 0.0
    assert rows[0]["official_std"] == 0.0
    assert rows[1]["official_std"] > 0.0  # four different draws
