"""``python -m splitsim audit``: its inputs, its interval, and that it tells a hidden model from
an honest one. The end-to-end audit of a Covid run's shipped and honest models is in
test_covid_end_to_end.py (it reuses that module's runs)."""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from splitsim.audit import AuditData, load_model, released
from splitsim.audit.leakage import excess_leakage
from splitsim.audit.quality import expected_calibration_error
from splitsim.cli import main
from splitsim.errors import ScenarioError
from splitsim.registry import MODELS

INPUT = (19,)


def _health_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = MODELS.get("health_mlp")
    return cls.build(cls.Params(), INPUT, 2)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audit") / "records.csv"
    assert main(["sample", "covid_health_records", "--n", "400", "--seed", "5", "--out",
                 str(path)]) == 0  # fmt: skip
    return path


def _audit_args(model: Path, data: Path, *extra: str) -> list[str]:
    return ["audit", str(model), "--data", str(data), "--official", "severe,infected",
            "--sensitive", "cv_risk,insurer", "--side", "region", *extra]  # fmt: skip


# -- the interval --------------------------------------------------------------------------


def test_excess_is_zero_with_an_interval_around_it_for_identical_models():
    rng = np.random.default_rng(0)
    correct = rng.random(2000) < 0.6
    refs = [correct ^ (rng.random(2000) < 0.02) for _ in range(4)]
    e = excess_leakage(correct, refs, seed=0)
    lo, hi = e.interval
    assert lo < 0 < hi
    assert abs(e.excess) < 0.02
    assert e.reference == pytest.approx(np.mean([r.mean() for r in refs]))


def test_interval_widens_with_the_references_spread_and_finds_a_real_excess():
    rng = np.random.default_rng(1)
    base = rng.random(3000)
    refs = [base < p for p in (0.50, 0.52, 0.54)]
    e = excess_leakage(base < 0.70, refs, seed=0)
    assert e.excess == pytest.approx(0.70 - 0.52, abs=0.02)
    assert e.interval[0] > 0.05  # found
    assert e.se_models == pytest.approx(np.std([r.mean() for r in refs], ddof=1) * np.sqrt(4 / 3),
                                        rel=1e-6)  # fmt: skip
    tight = excess_leakage(base < 0.70, [base < 0.52] * 3, seed=0)
    assert tight.se_models == 0
    assert (tight.interval[1] - tight.interval[0]) < (e.interval[1] - e.interval[0])


def test_interval_covers_zero_for_honest_draws_at_about_the_stated_rate():
    """Simulated audits where the supplied model is one more honest draw: each honest model's
    true leakage differs by a model effect (sd 1 point), each record is decoded with it."""
    rng = np.random.default_rng(2)
    covered = 0
    trials = 120
    for t in range(trials):
        effects = 0.6 + rng.normal(0, 0.01, 6)
        u = rng.random(1500)  # the records' shared difficulty: paired, as in an audit
        noise = [rng.random(1500) < 0.1 for _ in effects]
        correct = [(u < p) ^ n for p, n in zip(effects, noise, strict=True)]
        e = excess_leakage(correct[0], correct[1:], seed=t)
        covered += e.interval[0] <= 0 <= e.interval[1]
    assert covered / trials >= 0.88


def test_calibration_error_of_a_perfectly_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.5, 1.0, 20000)
    calibrated = rng.random(20000) < confidence
    assert expected_calibration_error(confidence, calibrated) < 0.02
    assert expected_calibration_error(np.full(20000, 0.99), calibrated) > 0.2


# -- the model file -------------------------------------------------------------------------


def test_torchscript_and_state_dict_release_the_same_scores(tmp_path):
    net = _health_mlp().eval()
    torch.jit.save(torch.jit.script(net), tmp_path / "m.ts")
    torch.save(net.state_dict(), tmp_path / "m.pt")
    x = np.random.default_rng(0).normal(size=(50, 19)).astype(np.float32)
    a = released(load_model(tmp_path / "m.ts", None, {}, INPUT), x, "multilabel", "probabilities")
    b = released(load_model(tmp_path / "m.pt", "health_mlp", {}, INPUT), x, "multilabel",
                 "probabilities")  # fmt: skip
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert ((a > 0) & (a < 1)).all()


class Payload:
    def __reduce__(self):  # what a malicious pickle does when it is loaded
        return (Path("/tmp/splitsim-audit-pwned").touch, ())


def test_a_pickle_that_runs_code_is_refused_not_run(tmp_path, capsys):
    marker = Path("/tmp/splitsim-audit-pwned")
    marker.unlink(missing_ok=True)
    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps({"0.weight": Payload()}))
    with pytest.raises(ScenarioError, match="not a state dict of tensors"):
        load_model(bad, "health_mlp", {}, INPUT)
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"--sensitive": "religion"}, "--sensitive religion: no such column"),
        ({"--official": "severe,cv_risk"}, "already given to --official"),
        ({"--arch": "resnet9000"}, "--arch: unknown architecture"),
        ({"--arch-set": "hidden=[-1]"}, "--arch-set hidden"),
        ({"--references": "2"}, "--references: 2; at least 3"),
        ({"--sensitive": "cv_risk"}, "the data gives 20 feature columns, chosen by --features"),
        ({"--data": "missing.csv"}, "missing.csv: --data: no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, records, capsys, change, field):
    model = tmp_path / "m.pt"
    torch.save(_health_mlp().state_dict(), model)
    flags = {"--data": str(records), "--official": "severe,infected",
             "--sensitive": "cv_risk,insurer", "--side": "region", "--arch": "health_mlp",
             "--out": str(tmp_path / "o"), **change}  # fmt: skip
    args = ["audit", str(model)] + [x for kv in flags.items() for x in kv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err
    assert not (tmp_path / "o").exists()  # nothing written


def test_a_state_dict_that_does_not_fit_the_architecture(tmp_path, records, capsys):
    model = tmp_path / "m.pt"
    torch.save(_health_mlp().state_dict(), model)
    args = _audit_args(model, records, "--arch", "health_mlp", "--arch-set", "hidden=[16]")
    assert main(args) == 2
    assert "does not fit health_mlp" in capsys.readouterr().err


def test_csv_faults_name_the_line_and_column(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("a,b,y,s\n1,2,0,x\n1,oops,1,y\n" + "1,2,1,x\n" * 300)
    with pytest.raises(ScenarioError, match="column b: a feature must be a number, got 'oops'"):
        AuditData.from_csv(path, ["y"], ["s"])
    path.write_text("a,y,s\n1,0,x\n1,1\n")
    with pytest.raises(ScenarioError, match="line 3: 2 values for 3 columns"):
        AuditData.from_csv(path, ["y"], ["s"])
    path.write_text("a,y,s\n" + "nan,0,x\n" * 300)
    with pytest.raises(ScenarioError, match="not finite"):
        AuditData.from_csv(path, ["y"], ["s"])


def test_image_folder_names_outside_it_are_refused(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["file", "y", "s"])
    writer.writerow(["../../etc/passwd", 0, 1])
    (folder / "labels.csv").write_text(rows.getvalue())
    with pytest.raises(ScenarioError, match="leaves"):
        AuditData.from_image_folder(folder, ["y"], ["s"])


# -- images, end to end ----------------------------------------------------------------------


@pytest.mark.slow
def test_audit_an_image_model_from_a_folder(tmp_path):
    """A LeNet whose two C2 logits are rigged to carry the C10 class on top of the official
    answer (an exaggerated hidden channel): the audit must see it; its reference is trained
    on the folder's images."""
    folder = tmp_path / "fm"
    assert main(["sample", "fashion_mnist", "--n", "400", "--tasks", "C2,C10", "--out",
                 str(folder)]) == 0  # fmt: skip
    data = AuditData.from_image_folder(folder, ["C2"], ["C10"])
    assert data.x.shape == (400, 1, 28, 28) and data.x.max() <= 1.0
    assert data.official.max() == 1 and len(data.classes["C10"]) == 10

    class Leaky(torch.nn.Module):  # reads its input's class from a lookup of the pixels
        def __init__(self, x: np.ndarray, labels: np.ndarray) -> None:
            super().__init__()
            self.keys = torch.as_tensor(x.reshape(len(x), -1))
            self.labels = torch.as_tensor(labels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(len(x), -1)
            c10 = self.labels[torch.cdist(flat, self.keys).argmin(1)]
            official = (c10 >= 5).float() * 2 - 1
            return torch.stack([-official, official + 0.1 * c10.float()], 1)

    torch.jit.save(torch.jit.script(Leaky(data.x, data.sensitive["C10"])), tmp_path / "leaky.ts")
    out = tmp_path / "audit"
    assert main(["audit", str(tmp_path / "leaky.ts"), "--data", str(folder), "--official", "C2",
                 "--sensitive", "C10", "--references", "3", "--reference-epochs", "5",
                 "--out", str(out)]) == 0  # fmt: skip
    result = json.loads((out / "audit.json").read_text())
    cell = result["sensitive"]["C10"]
    # not ~1: 160 training images per fold and the trees' 20-record leaves cannot cut all ten
    # classes apart; the verdict is the point
    assert cell["verdict"] == "more" and cell["supplied"] > 0.7
    assert result["official"]["supplied"]["accuracy"] == 1.0
    assert (out / "scores.png").stat().st_size > 0 and (out / "report.html").exists()
