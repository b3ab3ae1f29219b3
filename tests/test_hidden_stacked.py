"""Regimes trained side by side (stacked.py) follow the trajectories they follow alone."""

import copy

import pytest
import torch

from splitsim.data.health_records import CovidHealthRecords
from splitsim.data.score_data import OfficialTask
from splitsim.models.mlp import mlp
from splitsim.roles.hidden_learning.attack import train_supplier
from splitsim.roles.hidden_learning.stacked import Regime, _Adam, _Flat, stackable


def _supplier(stack: bool, epochs: int = 3):
    ds = CovidHealthRecords(CovidHealthRecords.Params(train_records=1500, test_records=200), 0)
    secrets = ["cv_risk", "insurer"]
    ticks: list[str] = []
    models = train_supplier(
        ds.supplier_train(),
        ds.spec.official,
        secrets,
        {name: len(ds.spec.secret_classes[name]) for name in secrets},
        lambda: mlp(19, [32, 32], 2),
        lambda n_in, n_out: mlp(n_in, [16, 32], n_out),
        epochs=epochs, batch_size=64, lr=1e-3, validation_fraction=0.1, seed=3,
        on_epoch=ticks.append, stack=stack,
    )  # fmt: skip
    return models, ticks


def _networks(models) -> dict[str, torch.Tensor]:
    nets = {
        "hidden": models.hidden.official,
        "honest": models.honest.official,
        **{f"hidden/{k}": v for k, v in models.hidden.secrets.items()},
        **{f"then/{k}": v for k, v in models.then_secret.items()},
        **{f"only/{k}": t.official for k, t in models.secret_only.items()},
        **{f"only/{k}/secret": t.secrets[k] for k, t in models.secret_only.items()},
    }
    return {f"{n}.{p}": v for n, net in nets.items() for p, v in net.state_dict().items()}


def test_stacked_regimes_match_one_at_a_time():
    """Every network of the six regimes, its kept epoch and its validation history agree with
    training each regime alone; only float rounding differs (baddbmm against addmm)."""
    alone, ticks_alone = _supplier(stack=False)
    together, ticks_together = _supplier(stack=True)
    assert len(ticks_together) == len(ticks_alone) == 3 * 6
    a, b = _networks(alone), _networks(together)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    for name in ("hidden", "honest"):
        ta, tb = getattr(alone, name), getattr(together, name)
        assert ta.best_epoch == tb.best_epoch
        for ha, hb in zip(ta.history, tb.history, strict=True):
            assert ha.keys() == hb.keys()
            for k in ha:
                assert ha[k] == pytest.approx(hb[k], abs=1e-3), (name, k)


def test_adam_on_a_flat_buffer_is_torch_adam():
    torch.manual_seed(0)
    flat = _Flat([(3, 4), (5,)], torch.device("cpu"))
    with torch.no_grad():
        flat.data.normal_()
    reference = [v.detach().clone().requires_grad_(True) for v in flat.views]
    ours, theirs = _Adam(flat, lr=0.01), torch.optim.Adam(reference, lr=0.01)
    for step in range(20):
        target = torch.randn(17, generator=torch.Generator().manual_seed(step))
        for params in (flat.views, reference):
            loss = ((torch.cat([p.reshape(-1) for p in params]) - target) ** 2).sum()
            if params is flat.views:
                flat.grad.zero_()
            else:
                theirs.zero_grad()
            loss.backward()
        ours.step()
        theirs.step()
    torch.testing.assert_close(flat.views[0], reference[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(flat.views[1], reference[1], rtol=1e-6, atol=1e-7)
    # the gradient really accumulated into the flat buffer, not into tensors of its own
    assert flat.views[0].grad.data_ptr() == flat.grad.data_ptr()


def test_what_is_not_an_mlp_trains_alone():
    task = OfficialTask(kind="multiclass", names=("a", "b"))
    from splitsim.roles.hidden_learning.scores import ScoreNet

    mlp_net = ScoreNet(mlp(4, [8], 2), task)
    conv = ScoreNet(torch.nn.Sequential(torch.nn.Conv1d(1, 1, 3), torch.nn.Flatten()), task)
    secret = {"s": mlp(4, [8], 3)}
    assert stackable(
        [
            Regime(mlp_net, secret, True, False, 0),
            Regime(copy.deepcopy(mlp_net), {}, True, False, 1),
        ]
    )
    assert not stackable(
        [Regime(mlp_net, secret, True, False, 0), Regime(conv, {}, True, False, 1)]
    )
    assert not stackable(
        [Regime(mlp_net, {}, True, False, 0), Regime(mlp_net, secret, False, True, 1)]
    )
    wider = ScoreNet(mlp(4, [16], 2), task)
    assert not stackable([Regime(mlp_net, {}, True, False, 0), Regime(wider, {}, True, False, 1)])
