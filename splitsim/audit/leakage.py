"""How much a model's released scores say about a sensitive attribute, and how sure we are.

The measure is the black-box attacker of the hidden-learning paper (papers/001, section 4.1,
To-then-Ts): a decoder trained on the scores (and side fields) of labelled records, scored on
records it did not see. The audit asks it of the supplied model and of honest references, on
the same records, and reports the difference ("excess leakage").

- Decoder: gradient-boosted trees (scikit-learn's ``HistGradientBoostingClassifier``). A hidden
  channel may sit in fine structure of the score space; trees cut it at any scale, need no
  feature scaling, and fit in a second.
- Cross-fitting: every decoding record is predicted by a decoder trained on the other folds
  (stratified k-fold), so each record counts once and none is wasted on a fixed test split.
- Uncertainty, two sources, both in the interval:
  - the records: a paired bootstrap over decoding records (the supplied model and the
    references are scored on the same records, so their difference is resampled together);
  - the honest model itself: an honest network trained from another seed leaks a little more or
    less. The spread of the R references' accuracies estimates it, and the supplied model, if
    honest, is one more such draw: variance ``s_ref^2 (1 + 1/R)``.
  The interval is Student's t with the Welch-Satterthwaite degrees of freedom of that sum.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from splitsim import seeds

BOOTSTRAP = 2000
LEVEL = 0.95


def decoder(seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        max_iter=100,
        learning_rate=0.15,
        max_leaf_nodes=15,
        early_stopping=False,
        random_state=seed % 2**31,
    )


def folds_of(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds, fixed per audit: every model is decoded on the same splits. A class
    rarer than ``k`` records simply misses some folds (scikit-learn warns; it is expected)."""
    splitter = StratifiedKFold(
        k, shuffle=True, random_state=seeds.int_seed(seed, "audit.folds") % 2**31
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return list(splitter.split(np.zeros(len(y)), y))


def out_of_fold(
    features: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], seed: int
) -> np.ndarray:
    """Each record's decoded class from a decoder that never saw it."""
    pred = np.empty(len(y), dtype=np.int64)
    for i, (train, test) in enumerate(folds):
        if len(np.unique(y[train])) < 2:
            pred[test] = y[train][0]
            continue
        model = decoder(seeds.int_seed(seed, "audit.decoder", i))
        # One OpenMP thread: the trees' threads spin-wait for a busy core (2-core box, other
        # jobs running: 83 s per fit with the default, 2.4 s with one thread)
        with threadpool_limits(1):
            model.fit(features[train], y[train])
            pred[test] = model.predict(features[test])
    return pred


@dataclass
class Excess:
    """The supplied model's decoding accuracy beyond the honest references'."""

    supplied: float
    reference: float  # mean over references
    reference_each: list[float]
    excess: float
    interval: tuple[float, float]
    se_records: float
    se_models: float
    dof: float

    def as_dict(self) -> dict:
        return {
            "supplied": self.supplied,
            "reference": self.reference,
            "reference_each": self.reference_each,
            "excess": self.excess,
            "interval": list(self.interval),
            "se_records": self.se_records,
            "se_models": self.se_models,
            "dof": self.dof,
        }


def excess_leakage(supplied: np.ndarray, references: list[np.ndarray], seed: int) -> Excess:
    """``supplied`` and each of ``references``: 1 where a record was decoded right, else 0."""
    refs = np.stack(references).astype(np.float64)
    sup = supplied.astype(np.float64)
    diff = sup - refs.mean(0)  # per record, paired
    excess = float(diff.mean())
    rng = seeds.rng(seed, "audit.bootstrap")
    draws = rng.integers(0, len(diff), size=(BOOTSTRAP, len(diff)))
    se_records = float(diff[draws].mean(1).std(ddof=1))
    r = len(references)
    accs = refs.mean(1)
    var_models = float(accs.var(ddof=1)) * (1 + 1 / r) if r > 1 else 0.0
    var = se_records**2 + var_models
    # Welch-Satterthwaite: the model term is estimated from r - 1 degrees of freedom, the
    # record term from thousands (taken as infinite)
    dof = var**2 / (var_models**2 / (r - 1)) if var_models > 0 else np.inf
    half = float(stats.t.ppf(0.5 + LEVEL / 2, dof)) * np.sqrt(var)
    return Excess(
        supplied=float(sup.mean()),
        reference=float(accs.mean()),
        reference_each=[float(a) for a in accs],
        excess=excess,
        # an accuracy difference lies in [-1, 1]: so does every value the interval may claim
        interval=(max(-1.0, excess - half), min(1.0, excess + half)),
        se_records=se_records,
        se_models=float(np.sqrt(var_models)),
        dof=float(dof),
    )
