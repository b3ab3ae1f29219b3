"""Random streams by named purpose: every random draw in splitsim comes from one of these.

``seeds.stream(seed, "split.batch_order", pid, rnd)`` is an independent NumPy ``SeedSequence`` for
that purpose, scenario seed and labels (a partition, a round...), reproducible anywhere: in the
driver, in a Ray actor, on a SuperNode. The numbers below are the purposes' historical labels,
kept so that the same seed gives the same numbers as runs made before the purposes had names; a
new purpose takes a name and a number of its own. Two roles may share a number: their streams
never meet in one run.
"""

from __future__ import annotations

import numpy as np

PURPOSES: dict[str, int] = {
    # datasets
    "records.train": 1,
    "records.test": 2,
    "records.deploy": 3,
    "images.deploy_order": 50,
    "images.train_subset": 51,
    # hidden learning (papers/001)
    "hidden.validation_split": 10,
    "hidden.network_init": 20,
    "hidden.client_weight_noise": 40,
    "hidden.client_payload_noise": 41,
    "hidden.robustness_noise": 60,
    "hidden.adaptive_batches": 80,
    "hidden.adaptive_val_noise": 81,
    "hidden.adaptive_noise": 82,
    "hidden.owner_distillation": 43,
    "hidden.adaptive_distillation": 83,
    # split learning and model inversion (papers/003)
    "split.train_partition": 60,
    "split.batch_order": 61,
    "split.training_noise": 62,
    "split.inference_noise": 63,
    "split.server_init": 64,
    "split.test_partition": 65,
    "split.non_iid_partition": 66,
    "split.gradient_noise": 67,
    # label inference by a curious data owner (Li et al., ICLR 2022)
    "labels.observed": 110,
    "labels.anchors": 111,
    # SplitGuard, a split-learning owner's detector (Erdoğan et al., WPES 2022)
    "splitguard.fake": 120,
    "splitguard.labels": 121,
    "splitguard.half": 122,
    # the hijacking server (Pasquini et al., CCS 2021)
    "hijack.init": 130,
    "hijack.public_batches": 131,
    "hijack.passive": 132,
    "inversion.training_targets": 70,
    "inversion.attack": 71,
    "inversion.noise_sweep": 72,
    # property inference in federated training (papers/002)
    "property.split": 80,
    "property.schedule": 81,
    "property.round_records": 82,
    "property.local_training": 83,
    "property.synthetic": 84,
    "property.update_noise": 85,
    "property.init": 86,
    "property.probe": 87,
    # gradient inversion by the FedAvg server (Zhu et al. 2019; Geiping et al. 2020)
    "gradient.shares": 140,
    "gradient.init": 141,
    "gradient.local_training": 142,
    "gradient.update_noise": 143,
    "gradient.attack": 144,
    "gradient.attacker_images": 145,
    # perturbation probing (papers/004)
    "probe.client_input_noise": 90,
    "probe.client_answer_noise": 91,
    "probe.directions": 100,
    "probe.decoder": 101,
    "probe.served_model": 102,
    "probe.served_input_noise": 103,
    # malicious training code (papers/002 sec. 3; Song, Ristenpart, Shmatikov, CCS 2017)
    "malicious.split": 150,
    "malicious.init": 151,
    "malicious.local_training": 152,
    "malicious.supplier_key": 153,
    "malicious.synthetic": 154,
    "malicious.keystream": 155,
    "malicious.weight_noise": 156,
    "malicious.answer_noise": 157,
    "malicious.release": 158,
    "probe.adaptive_defences": 104,
    # the auditor of a supplied model (splitsim audit; issue 27)
    "audit.halves": 170,
    "audit.reference_init": 171,
    "audit.reference_batches": 172,
    "audit.folds": 173,
    "audit.decoder": 174,
    "audit.bootstrap": 175,
    "records.audit": 176,
    "images.audit": 177,
}


def purpose(name: str) -> int:
    try:
        return PURPOSES[name]
    except KeyError:
        raise KeyError(
            f"unknown random-stream purpose {name!r}; add it to seeds.PURPOSES"
        ) from None


def stream(seed: int, name: str, *labels: int) -> np.random.SeedSequence:
    """An independent random stream per (scenario seed, purpose, labels)."""
    return np.random.SeedSequence([seed, purpose(name), *labels])


def rng(seed: int, name: str, *labels: int) -> np.random.Generator:
    """:func:`stream` as a NumPy generator."""
    return np.random.default_rng(stream(seed, name, *labels))


def int_seed(seed: int, name: str, *labels: int) -> int:
    """:func:`stream` as one integer, for APIs that take an int seed (torch)."""
    return int(stream(seed, name, *labels).generate_state(1)[0])


class Seeds:
    """One scenario seed's streams (a role holds one as ``self.seeds``)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def stream(self, name: str, *labels: int) -> np.random.SeedSequence:
        return stream(self.seed, name, *labels)

    def rng(self, name: str, *labels: int) -> np.random.Generator:
        return rng(self.seed, name, *labels)

    def int(self, name: str, *labels: int) -> int:
        return int_seed(self.seed, name, *labels)
