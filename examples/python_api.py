"""splitsim from Python: the Covid-app scenario, briefly, without and with a defence.

    python examples/python_api.py [--epochs 2] [--out runs/examples]

A Scenario is read once and varied in code; each run writes its own folder, as
``python -m splitsim run`` does, and returns its metrics. tests/test_python_api.py runs this.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import splitsim

HERE = Path(__file__).resolve().parent


def main(epochs: int, out: str) -> dict[str, splitsim.RunResult]:
    base = splitsim.Scenario.from_yaml(HERE.parent / "scenarios" / "hidden_covid_app.yaml")
    variants = {
        "undefended": {"training.epochs": epochs},
        "laplace 0.5 on the scores": {
            "training.epochs": epochs,
            "defences": [{"name": "laplace", "scale": 0.5}],
        },
    }
    results = {}
    for label, changes in variants.items():
        result = results[label] = splitsim.run(base, set=changes, out=out, quiet=True)
        summary = result.summary
        utility = summary["utility"]
        print(f"{label}: {utility['name']} {utility['value']:.3f} (folder {result.folder})")
        for leak in summary["leakage"]:
            print(f"  {leak['name']}: {leak['value']:.3f} (blind guess {leak['chance']:.3f})")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/examples")
    args = parser.parse_args()
    main(args.epochs, args.out)
