"""Synthetic health records for the Covid-risk phone app (hidden-learning paper, section 1).

The generator is a small structural causal model. Every user is drawn independently; the
structural parameters below are fixed constants, so two samples with different seeds come from
the same population and a deployment partition can be regenerated from ``(seed, partition)``
alone. Arrows read "depends on":

    region      ~ Categorical(REGION_SHARES)                       (sent to the server in clear)
    age         ~ 18 + 72 * Beta(1.6, 2.0)
    sex         ~ Bernoulli(0.49)                                   (1 = male)
    income      ~ REGION_INCOME[region] + 0.35 * retired(age) ... + N(0, 1)   latent, never recorded
    smoking     <- income, sex, age
    bmi         <- age, income
    bp          <- age, bmi, smoking        (systolic blood pressure, mmHg)
    cholesterol <- age, bmi, sex            (total cholesterol, mmol/L)
    diabetes    <- age, bmi, income
    lung        <- age, smoking             (chronic lung disease)
    vaccinated  <- age, income, region
    infected    <- region prevalence, vaccinated, age               OFFICIAL label 2
    symptoms    <- infected                 (number of Covid-like symptoms reported, 0..6)
    spo2        <- infected, lung, age      (resting oxygen saturation, %)
    severe      <- age, sex, bmi, diabetes, lung, vaccinated        OFFICIAL label 1
    cv_risk     <- Framingham-like 10-year score of age, sex, cholesterol, bp, smoking, diabetes
                   -> low (< 7.5 %), intermediate (7.5-20 %), high (>= 20 %)   SECRET label 1
    insurer     <- region, age (retired), income                    SECRET label 2
                   -> public, mutual, premium, budget

Why this shape: the secrets are functions of the record (so a network that sees the record can
recover them: Ts-only is high), but the official labels are driven mostly by other causes
(infection by region and vaccination, severity by lung disease, diabetes and vaccination), so an
honest network's two probabilities say little about cholesterol, blood pressure or income: the
black-box attacker (To-then-Ts) is clearly worse. That gap is what hidden learning exploits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from splitsim import seeds
from splitsim.data.score_data import DatasetSpec, OfficialTask, ScoreData, partition_size
from splitsim.registry import DATASETS

REGIONS = 8
REGION_SHARES = np.array([0.20, 0.16, 0.14, 0.12, 0.12, 0.10, 0.09, 0.07])
REGION_INCOME = np.array([0.8, 0.3, 0.0, -0.2, -0.4, 0.5, -0.7, 0.1])
REGION_PREVALENCE = np.array([-0.4, 0.3, -1.0, 0.6, -0.2, -0.7, 0.9, 0.0])
REGION_VACCINATION = np.array([0.4, -0.2, 0.3, -0.5, 0.0, 0.6, -0.6, 0.1])
# Insurer utilities per region: (public, mutual, premium, budget); regional market shares.
REGION_INSURER = np.array(
    [
        [0.0, 0.5, 0.6, -0.3],
        [0.3, 0.9, 0.0, 0.0],
        [0.0, 0.0, 0.2, 0.4],
        [0.5, -0.2, -0.3, 0.5],
        [0.2, 0.5, -0.2, 0.2],
        [-0.2, 0.3, 0.5, 0.0],
        [0.6, 0.0, -0.5, 0.4],
        [0.0, 0.4, 0.1, 0.1],
    ]
)

FEATURES = (
    "age",
    "sex",
    "bmi",
    "smoking",
    "bp",
    "cholesterol",
    "diabetes",
    "lung",
    "vaccinated",
    "symptoms",
    "spo2",
)
# Fixed standardisation so that an encoding never depends on the sample it came from.
_CENTRE = np.array([47.0, 0.5, 27.0, 0.25, 128.0, 5.2, 0.1, 0.08, 0.65, 1.2, 96.5])
_SPREAD = np.array([17.0, 0.5, 5.0, 0.45, 17.0, 1.0, 0.3, 0.27, 0.48, 1.4, 1.8])

OFFICIAL_TASKS = ("severe", "infected")
SECRET_CLASSES = {
    "cv_risk": ("low", "intermediate", "high"),
    "insurer": ("public", "mutual", "premium", "budget"),
}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _bernoulli(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    return (rng.random(p.shape) < p).astype(np.int64)


@dataclass(frozen=True)
class HealthRecords:
    """A sample of users: the raw record, its network encoding, and every label."""

    raw: dict[str, np.ndarray]
    region: np.ndarray
    official: np.ndarray  # (n, 2) int: severe, infected
    secrets: dict[str, np.ndarray]  # name -> (n,) int class index

    def __len__(self) -> int:
        return int(self.region.shape[0])

    def features(self) -> np.ndarray:
        """What the phone feeds its network: standardised record plus one-hot region."""
        cols = np.stack([self.raw[f] for f in FEATURES], axis=1).astype(np.float64)
        scaled = (cols - _CENTRE) / _SPREAD
        return np.concatenate([scaled, region_one_hot(self.region)], axis=1).astype(np.float32)


def region_one_hot(region: np.ndarray) -> np.ndarray:
    return np.eye(REGIONS, dtype=np.float32)[region]


def framingham_like_risk(
    age: np.ndarray,
    sex: np.ndarray,
    cholesterol: np.ndarray,
    bp: np.ndarray,
    smoking: np.ndarray,
    diabetes: np.ndarray,
) -> np.ndarray:
    """Ten-year cardiovascular risk in [0, 1]; log-odds linear in the Framingham risk factors."""
    z = (
        -2.75
        + 0.08 * (age - 50)
        + 0.45 * sex
        + 0.4 * (cholesterol - 5.2)
        + 0.025 * (bp - 128)
        + 0.65 * smoking
        + 0.6 * diabetes
    )
    return _sigmoid(z)


def generate(n: int, seed: int | np.random.SeedSequence) -> HealthRecords:
    """Draw ``n`` independent users; the same seed gives the same users."""
    rng = np.random.default_rng(seed)
    region = rng.choice(REGIONS, size=n, p=REGION_SHARES)
    age = np.round(18 + 72 * rng.beta(1.6, 2.0, size=n))
    sex = _bernoulli(rng, np.full(n, 0.49))
    retired = (age >= 65).astype(np.float64)
    income = REGION_INCOME[region] - 0.5 * retired + rng.normal(0.0, 0.8, n)

    smoking = _bernoulli(rng, _sigmoid(-1.1 - 1.3 * income + 0.4 * sex - 0.015 * (age - 45)))
    bmi = np.clip(26.5 + 0.06 * (age - 45) - 3.4 * income + rng.normal(0, 2.5, n), 16, 50)
    bp = 118 + 0.55 * (age - 45) + 0.7 * (bmi - 27) + 3 * smoking + rng.normal(0, 11, n)
    cholesterol = 5.0 + 0.012 * (age - 45) + 0.03 * (bmi - 27) + 0.15 * sex + rng.normal(0, 0.9, n)
    diabetes = _bernoulli(
        rng, _sigmoid(-3.0 + 0.04 * (age - 45) + 0.16 * (bmi - 27) - 0.3 * income)
    )
    lung = _bernoulli(rng, _sigmoid(-3.3 + 0.03 * (age - 45) + 1.6 * smoking))
    vaccinated = _bernoulli(
        rng, _sigmoid(0.6 + 0.03 * (age - 45) + 0.5 * income + REGION_VACCINATION[region])
    )

    infected = _bernoulli(
        rng, _sigmoid(-0.6 + REGION_PREVALENCE[region] - 1.2 * vaccinated - 0.012 * (age - 45))
    )
    symptoms = np.clip(rng.poisson(0.5 + 2.2 * infected), 0, 6)
    spo2 = np.clip(
        97.6 - 1.4 * infected - 2.0 * lung - 0.02 * (age - 45) + rng.normal(0, 0.9, n), 82, 100
    )
    severity = (
        -2.4
        + 0.15 * (age - 45)
        + 0.9 * sex
        + 0.22 * np.maximum(bmi - 30, 0)
        + 3.9 * diabetes
        + 5.4 * lung
        - 5.4 * vaccinated
    )
    severe = _bernoulli(rng, _sigmoid(severity))

    risk = framingham_like_risk(age, sex, cholesterol, bp, smoking, diabetes)
    cv_risk = np.digitize(risk, [0.075, 0.20])

    utility = REGION_INSURER[region] + np.stack(
        [
            0.8 * retired - 1.3 * income,  # public
            0.4 + 0.2 * income,  # mutual
            2.2 * income - 0.3 * retired,  # premium
            -1.1 * income + 0.4 * (age < 35),  # budget
        ],
        axis=1,
    )
    insurer = np.argmax(utility + rng.gumbel(0.0, 0.2, utility.shape), axis=1)

    raw = {
        "age": age,
        "sex": sex,
        "bmi": np.round(bmi, 1),
        "smoking": smoking,
        "bp": np.round(bp),
        "cholesterol": np.round(cholesterol, 1),
        "diabetes": diabetes,
        "lung": lung,
        "vaccinated": vaccinated,
        "symptoms": symptoms,
        "spo2": np.round(spo2, 1),
    }
    return HealthRecords(
        raw=raw,
        region=region.astype(np.int64),
        official=np.stack([severe, infected], axis=1),
        secrets={"cv_risk": cv_risk.astype(np.int64), "insurer": insurer.astype(np.int64)},
    )


def to_score_data(records: HealthRecords) -> ScoreData:
    return ScoreData(
        x=records.features(),
        side=CovidHealthRecords.side_features({"region": records.region}, len(records)),
        side_raw={"region": records.region},
        official=records.official,
        secrets=dict(records.secrets),
    )


@DATASETS.register("covid_health_records")
class CovidHealthRecords:
    """Synthetic phone-app health records; official: severe, infected; secret: cv_risk, insurer."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        train_records: int = Field(20000, ge=100, description="the supplier's training records")
        test_records: int = Field(5000, ge=100, description="held-out records for the regimes")

    fixed = DatasetSpec(
        official=OfficialTask(kind="multilabel", names=OFFICIAL_TASKS),
        secret_classes=SECRET_CLASSES,
        side_fields=("region",),
    )

    @staticmethod
    def input_shape(params: object) -> tuple[int, ...]:
        """What a phone's network reads: the standardised record and the one-hot region."""
        return (len(FEATURES) + REGIONS,)

    @classmethod
    def describe(cls, params: Params, tasks: object | None) -> DatasetSpec:
        if tasks is not None:
            raise ValueError(
                "tasks",
                "covid_health_records has fixed tasks (official: severe, infected; "
                "secrets: cv_risk, insurer); remove this section",
            )
        return cls.fixed

    @staticmethod
    def side_features(side_raw: dict[str, np.ndarray], n: int) -> np.ndarray:
        """The secret network's view of the side fields, built from what crossed the wire."""
        return region_one_hot(side_raw["region"])

    def __init__(self, params: Params, seed: int, tasks: object | None = None) -> None:
        self.params = params
        self.seed = seed
        self.spec = self.fixed

    def supplier_train(self) -> ScoreData:
        return to_score_data(
            generate(self.params.train_records, seeds.stream(self.seed, "records.train"))
        )

    def supplier_test(self) -> ScoreData:
        return to_score_data(
            generate(self.params.test_records, seeds.stream(self.seed, "records.test"))
        )

    def partition(self, pid: int, clients: int, users: int) -> ScoreData:
        """The users held by Flower node ``pid``: regenerated from the seed, never shipped."""
        size = partition_size(users, clients, pid)
        return to_score_data(generate(size, seeds.stream(self.seed, "records.deploy", pid)))
