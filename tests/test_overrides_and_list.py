from pathlib import Path

from splitsim.cli import main
from splitsim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT / "scenarios" / "hidden_covid_app.yaml"


def test_set_overrides_any_field():
    scenario = load_scenario(
        COVID,
        [
            "deployment.clients=1000",
            "seed=3",
            "defences=[{name: laplace, scale: 0.05}]",
            "defences.0.scale=0.5",
            "models.secret.hidden=[8, 8]",
        ],
    )
    assert scenario.deployment.clients == 1000
    assert scenario.seed == 3
    assert scenario.defences[0].name == "laplace"
    assert scenario.defences[0].params.scale == 0.5
    assert scenario.models.secret.params.hidden == [8, 8]
    # the resolved scenario shows defaults that the file left out
    assert scenario.resolved()["engine"]["device"] == "auto"


def test_list_names_every_registered_part(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "hidden_learning",
        "laplace",
        "rounding",
        "weight_noise",
        "covid_health_records",
        "health_mlp",
        "secret_mlp",
    ):
        assert name in out
