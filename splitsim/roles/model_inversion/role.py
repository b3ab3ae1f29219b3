"""Threat model: split learning with an honest-but-curious server that inverts what it receives.

Phases, in the order they run (papers/003, sections 3-4 and Appendices A, B, D):

1. deploy: split training over Flower (protocol.py). Data owners hold f1 and send (defended)
   intermediate tensors; the server holds f2 and the labels and returns gradients. Then the
   owners send the intermediate tensors of their test images, and, under ``access:
   colluding``, one owner hands over its segment and its images. What the server holds after
   that is ``InversionReceived``. Under ``access: intercepting`` the attacker is instead a
   data owner (Appendix A's third setting): it gets a copy of another owner's inference
   exchange (protocol.py), and ``InversionReceived`` is what that owner holds;
2. attack: the attacker takes f1 (the colluder's, the copy the server relayed/averaged itself:
   "obtained alone", or the malicious owner's own) and its auxiliary images (the colluder's,
   the server's own: MNIST 40k-45k, a class-disjoint part of it, Fashion-MNIST or EMNIST as a
   foreign prior, or the malicious owner's own training images), trains a decoder (attack.py)
   and reconstructs the inputs behind the tensors it received at inference and in the last
   training epoch;
3. truth: the owners' images and labels, which only the harness knows;
4. evaluate: task accuracy, distance correlation (dcor), MSE / PSNR / SSIM and the accuracy of
   an independent classifier on reconstructions, and the after-training noise sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat

from splitsim.data.mnist import MNIST, aux_images, emnist_available
from splitsim.data.partitions import (
    class_histograms,
    test_partition,
    train_partition,
    train_partitions,
)
from splitsim.decoding import reconstruct
from splitsim.defences import apply_stage
from splitsim.defences import build as build_defences
from splitsim.engine import hosting
from splitsim.engine.resources import resolve_device
from splitsim.errors import ScenarioError
from splitsim.metrics import accuracy, distance_correlation_batches, image_quality, majority_rate
from splitsim.reference_classifier import predict, reference_classifier
from splitsim.registry import DATASETS, DEFENCES
from splitsim.roles.base import (
    AttackOutput,
    Evaluation,
    Received,
    Role,
    Truth,
    check_faults,
    register,
)
from splitsim.roles.model_inversion import report
from splitsim.roles.model_inversion.attack import intermediates, train_decoder
from splitsim.roles.model_inversion.protocol import (
    SplitOutcome,
    client_app,
    load_checkpoint,
    server_app,
    split_parts,
)
from splitsim.scenario import Scenario

MNIST_TEST = 10_000


@dataclass(kw_only=True)
class InversionReceived(Received):
    """What the curious server holds: every tensor owners sent it, the segment weights it
    relayed (FedAvg) or was handed, its own segment f2, and how training went. Under
    interception, what the malicious owner holds: the victim's intercepted tensors and the
    server's answers to them, and its own segment; no f2 and no training log."""

    partitions: list[int]  # owners in the order their inference tensors are stacked
    inference_z: np.ndarray  # owners' test-image tensors, stacked in ``partitions`` order
    training_z: np.ndarray  # tensors of the last epoch for the kept training image ids
    training_ids: np.ndarray  # their image ids (the keys of the labels the server holds)
    client_weights: dict[str, np.ndarray]  # f1 as the server last relayed it
    server_weights: dict[str, np.ndarray]  # f2, the server's own segment
    colluder_segment: dict[str, np.ndarray]  # the colluding owner's hand-over ({} if none)
    colluder_x: np.ndarray | None
    colluder_x_val: np.ndarray | None
    history: list[dict[str, float]]
    train_samples: dict[str, int]
    round_trips: int
    resumed_after: list[int] = field(default_factory=list)  # rounds a killed run went on from
    failures: list[dict[str, Any]] = field(default_factory=list)  # every failed try
    dropped: dict[str, str] = field(default_factory=dict)  # owner -> where it was left out
    answers: np.ndarray | None = None  # interception: the server's answers to the victim


@dataclass(kw_only=True)
class InversionOutput(AttackOutput):
    inference: np.ndarray  # reconstructions of ``inference_z``
    training: np.ndarray | None  # reconstructions of ``training_z``
    decoder: torch.nn.Module
    history: list[dict[str, float]]
    aux_size: int
    defences_known: list[str]


@dataclass(kw_only=True)
class InversionTruth(Truth):
    x: np.ndarray  # the owners' test images behind ``inference_z``
    y: np.ndarray
    x_train: np.ndarray  # the training images behind ``training_z``
    y_train: np.ndarray
    dcor_x: np.ndarray  # test images the distance correlation is measured on
    sweep: list[Any] = field(default_factory=list)


@register("model_inversion")
class ModelInversionServer(Role):
    """Curious split-learning server: trains a decoder from intermediate tensors back to inputs."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        schedule: Literal["parallel", "sequential"] = Field(
            "parallel", description="SplitFed (all owners each step, FedAvg) or owners in turn"
        )
        task_loss: Literal["cross_entropy", "softmax_outputs"] = Field(
            "cross_entropy",
            description="softmax_outputs: cross-entropy on softmax outputs, as the published "
            "code of papers/003 (its Table 1) does",
        )
        access: Literal["colluding", "stolen", "intercepting"] = Field(
            "colluding",
            description="Appendix A: a colluding owner, the server alone, or a data owner "
            "that intercepts another's tensors",
        )
        colluder: int = Field(
            0, ge=0, description="partition of the colluding (or intercepting) data owner"
        )
        victim: int = Field(1, ge=0, description="intercepting: the owner it intercepts")
        aux_data: Literal["same", "disjoint_classes", "fashion_mnist", "emnist"] = "same"
        aux_size: int = Field(5000, ge=10, description="attacker's images (paper: 250-5000)")
        aux_classes: list[int] | None = Field(None, description="disjoint_classes: kept digits")
        val_size: int = Field(1000, ge=10, description="attacker's validation images")
        adaptive: bool = Field(False, description="decoder trained on noised tensors")
        decoder: Literal["paper", "deep"] = Field(
            "paper", description="the published decoder, or one with ReLUs (stronger)"
        )
        decoder_epochs: int = Field(10, ge=1)
        training_targets: int = Field(
            500, ge=0, description="images of the last training epoch to reconstruct"
        )
        dcor_samples: int = Field(5000, ge=32, description="test images for distance corr.")
        noise_sweep: list[NonNegativeFloat] = Field(
            [0.0, 0.1, 0.5, 1.0],
            description="Laplace scales applied after training to the test tensors (Fig. 2a, 4)",
        )

    stages = ("payload", "loss")
    models = {"split": "split_cnn"}
    report = report
    datasets = ("mnist",)
    partitioners = ("iid", "dirichlet", "shards")
    label_holders = ("server", "owner")
    fault_tolerant = True  # engine.faults / on_client_failure: an owner given up on leaves training
    received_type = InversionReceived
    adaptive_override = "role.adaptive=true"
    attack_params = frozenset(
        {"aux_data", "aux_size", "val_size", "aux_classes", "adaptive", "decoder",
         "decoder_epochs", "dcor_samples", "noise_sweep"}
    )  # fmt: skip

    @classmethod
    def attack_params_for(cls, scenario: Scenario) -> frozenset[str]:
        """A colluder's hand-over was sent during deployment: its images are what they are."""
        access = scenario.role.params.access
        if access == "colluding":
            return cls.attack_params - {"aux_data", "aux_size", "val_size", "aux_classes"}
        if access == "intercepting":  # its own images: how many it uses can change
            return cls.attack_params - {"aux_data", "aux_classes"}
        return cls.attack_params

    @classmethod
    def client_app(cls, scenario: Scenario, storage: str, keep: str | None = None):  # noqa: ANN206
        return client_app(scenario, storage, keep)

    @staticmethod
    def summary(metrics: dict) -> dict:
        """The comparison matrix's numbers: task accuracy; leakage as the reference
        classifier's accuracy on inference-time reconstructions (headline), their SSIM and the
        distance correlation, each with its no-information level where one exists."""
        chance = metrics["utility"].get("chance")
        inference = metrics["leakage"]["inference"]
        return {
            "utility": {"name": "task accuracy", "value": metrics["utility"]["accuracy"],
                        "chance": chance},
            "leakage": [
                {"name": "reference accuracy on reconstructions",
                 "value": inference["reference_accuracy"], "chance": chance},
                {"name": "SSIM", "value": inference["ssim"], "chance": 0.0},
                {"name": "distance correlation",
                 "value": metrics["distance_correlation"]["mean"], "chance": 0.0},
            ],
        }  # fmt: skip

    @classmethod
    def check(cls, scenario: Scenario, source: str) -> None:
        p = scenario.role.params
        if p.access == "colluding" and p.aux_data != "same":
            raise ScenarioError(
                source,
                "role.aux_data",
                f"a colluding data owner hands over its own MNIST images, so aux_data must be "
                f"'same' (got {p.aux_data!r}); use access: stolen for another prior",
            )
        if p.access == "intercepting":
            cls._check_interception(scenario, source)
        if p.aux_data in ("same", "disjoint_classes") and p.aux_size > 5000:
            raise ScenarioError(
                source, "role.aux_size", "at most 5000 (the paper's attacker split 40k-45k)"
            )
        if p.aux_data in ("same", "disjoint_classes") and p.val_size > 5000:
            raise ScenarioError(
                source, "role.val_size", "at most 5000 (the paper's validation split 45k-50k)"
            )
        if p.aux_data == "disjoint_classes":
            classes = p.aux_classes or []
            if not classes or len(set(classes)) >= 10 or not all(0 <= c <= 9 for c in classes):
                raise ScenarioError(
                    source,
                    "role.aux_classes",
                    "disjoint_classes needs a list of 1-9 distinct digits 0-9 the attacker has",
                )
        elif p.aux_classes is not None:
            raise ScenarioError(
                source, "role.aux_classes", "only used with aux_data: disjoint_classes"
            )
        if p.aux_data == "emnist" and not (
            scenario.dataset.params.download or emnist_available(scenario.dataset.params.root)
        ):
            raise ScenarioError(
                source,
                "role.aux_data",
                f"EMNIST letters not found in {scenario.dataset.params.root}/EMNIST/raw; put "
                "torchvision's EMNIST files there or set dataset.download: true",
            )
        if p.colluder >= scenario.deployment.clients:
            raise ScenarioError(
                source,
                "role.colluder",
                f"must be below deployment.clients ({scenario.deployment.clients})",
            )
        clients = scenario.deployment.clients
        check_faults(scenario, source, ("train", "infer"), "split training", clients,
                     f"must be below deployment.clients ({clients})")  # fmt: skip
        if scenario.deployment.users > MNIST_TEST:
            raise ScenarioError(
                source, "deployment.users", f"at most {MNIST_TEST} (the MNIST test images)"
            )

    @staticmethod
    def _check_interception(scenario: Scenario, source: str) -> None:
        p = scenario.role.params
        clients = scenario.deployment.clients
        if p.victim >= clients or p.victim == p.colluder:
            raise ScenarioError(
                source, "role.victim",
                f"must be another data owner than role.colluder ({p.colluder}) and below "
                f"deployment.clients ({clients}); got {p.victim}",
            )  # fmt: skip
        if p.aux_data != "same":
            raise ScenarioError(
                source, "role.aux_data",
                f"an intercepting data owner trains on its own MNIST images: 'same' (got "
                f"{p.aux_data!r})",
            )  # fmt: skip
        if p.training_targets:
            raise ScenarioError(
                source, "role.training_targets",
                "the interceptor copies the victim's inference tensors only; set it to 0",
            )  # fmt: skip

    # -- 1. deploy: split training and inference over Flower ---------------------------

    def deploy(self) -> InversionReceived:
        p, t = self.params, self.scenario.training
        clients = self.scenario.deployment.clients
        dataset = self._dataset()
        labels = dataset.classifier_labels()
        n_train = len(labels)
        # Which training tensors of the last epoch the server keeps, by image id.
        rng = self.seeds.rng("inversion.training_targets")
        keep = rng.choice(n_train, size=min(p.training_targets, n_train), replace=False)
        parts = train_partitions(n_train, clients, self.scenario.seed, labels,
                                 self.scenario.deployment.partitioner)  # fmt: skip
        steps_per_round = sum(math.ceil(len(part) / t.batch_size) for part in parts)
        outcome = SplitOutcome()
        # A run in Flower's simulation checkpoints every round, and a resumed one goes on from
        # the last; under the deployment engine the owners' own machines would have to keep
        # their snapshots across runs, which a SuperNode's temp folder does not.
        checkpoints = self.run.checkpoints if hosting.current() is None else None
        resume = load_checkpoint(checkpoints) if checkpoints and self.run.resumed else None
        if resume is not None:
            self.resume_wire(resume["wire"])
            self.run.console.print(f"split training goes on after round {resume['round']}")
        with self.run.phase("split training", t.epochs * steps_per_round) as advance:
            if resume is not None:
                advance(n=int(resume["round"]) * steps_per_round)

            def on_round(row: dict[str, float]) -> None:
                self.run.console.log(
                    f"round {int(row['round'])}/{t.epochs}: server-side train accuracy "
                    f"{100 * row['train_accuracy']:.2f} %, loss {row['train_loss']:.4f}"
                )

            server = server_app(self.scenario, self.wire, outcome, set(keep.tolist()),
                                advance, on_round, checkpoints, resume)  # fmt: skip
            self.flower(server, outcome, keep=checkpoints / "owners" if checkpoints else None)
        if outcome.client_weights is None or outcome.server is None:
            raise RuntimeError("the Flower ServerApp ended before training finished")
        if p.access == "intercepting":
            return self._intercepted(outcome)
        pids = sorted(outcome.inference)
        handed = outcome.colluder
        return InversionReceived(
            partitions=pids,
            inference_z=np.concatenate([outcome.inference[pid] for pid in pids]),
            training_z=(
                np.concatenate(outcome.training_z) if outcome.training_z else np.zeros((0, 1), "f4")
            ),
            training_ids=(
                np.concatenate(outcome.training_ids)
                if outcome.training_ids
                else np.zeros(0, np.int64)
            ),
            client_weights=outcome.client_weights,
            server_weights={
                k: v.detach().numpy().copy() for k, v in outcome.server.state_dict().items()
            },
            colluder_segment={k.removeprefix("segment."): v for k, v in handed.items() if "." in k},
            colluder_x=handed.get("x"),
            colluder_x_val=handed.get("x_val"),
            history=outcome.history,
            train_samples={str(k): v for k, v in outcome.train_samples.items()},
            round_trips=outcome.round_trips,
            resumed_after=outcome.resumed_after,
            failures=outcome.failures,
            dropped={str(k): v for k, v in outcome.dropped.items()},
        )

    def _intercepted(self, outcome: SplitOutcome) -> InversionReceived:
        """What the intercepting owner reported holding: the copy of the victim's exchange
        and its own segment; the server's f2 and training log stay with the server."""
        held = outcome.observed
        return InversionReceived(
            partitions=[self.params.victim],
            inference_z=held["z"],
            answers=held["answers"],
            training_z=np.zeros((0, 1), "f4"),
            training_ids=np.zeros(0, np.int64),
            client_weights={
                k.removeprefix("segment."): v for k, v in held.items() if k.startswith("segment.")
            },
            server_weights={},
            colluder_segment={},
            colluder_x=None,
            colluder_x_val=None,
            history=[],
            train_samples={str(k): v for k, v in outcome.train_samples.items()},
            round_trips=outcome.round_trips,
            resumed_after=outcome.resumed_after,
            failures=outcome.failures,
            dropped={str(k): v for k, v in outcome.dropped.items()},
        )

    def _own_images(self) -> tuple[np.ndarray, np.ndarray]:
        """The intercepting owner's own training images: its validation images last."""
        p = self.params
        x_train, y_train = self._dataset().classifier_train()
        d = self.scenario.deployment
        mine = train_partition(len(x_train), d.clients, p.colluder, self.scenario.seed,
                               y_train, d.partitioner)  # fmt: skip
        n_val = min(p.val_size, len(mine) // 5)
        n_aux = min(p.aux_size, len(mine) - n_val)
        return x_train[mine[:n_aux]], x_train[mine[len(mine) - n_val :]]

    # -- 2. attack: a decoder from intermediate tensors back to images -----------------

    def attack(self, received: InversionReceived) -> InversionOutput:
        p, t = self.params, self.scenario.training
        if p.access == "colluding":
            segment_weights = received.colluder_segment
            aux, val = received.colluder_x, received.colluder_x_val
        elif p.access == "intercepting":
            segment_weights = received.client_weights
            aux, val = self._own_images()
        else:
            segment_weights = received.client_weights
            root, download = (
                self.scenario.dataset.params.root,
                self.scenario.dataset.params.download,
            )
            own = aux_images(p.aux_data, root, p.aux_size, p.val_size, p.aux_classes,
                             self.seeds.int("inversion.attack"), download)  # fmt: skip
            aux, val = own.x, own.x_val
        stolen, _ = split_parts(self.scenario)
        stolen.load_state_dict({k: torch.from_numpy(v) for k, v in segment_weights.items()})
        known = [d for d in build_defences(self.scenario.defences) if d.stage == "payload"]
        defend = None
        if p.adaptive and known:
            defence_rng = self.seeds.rng("inversion.attack", 1)

            def defend(z: np.ndarray) -> np.ndarray:
                return apply_stage(known, "payload", z, defence_rng)

        with self.run.phase("attacker's decoder", p.decoder_epochs) as advance:
            decoder, history = train_decoder(
                stolen,
                aux,
                val,
                defend=defend,
                epochs=p.decoder_epochs,
                batch_size=t.batch_size,
                lr=t.lr,
                seed=self.seeds.int("inversion.attack"),
                device=resolve_device(self.scenario.engine),
                deep=p.decoder == "deep",
                on_epoch=advance,
            )
        return InversionOutput(
            inference=reconstruct(decoder, received.inference_z),
            training=(
                reconstruct(decoder, received.training_z) if len(received.training_z) else None
            ),
            decoder=decoder,
            history=history,
            aux_size=len(aux),
            defences_known=[
                spec.name
                for spec in self.scenario.defences
                if defend is not None and DEFENCES.get(spec.name).stage == "payload"
            ],
        )

    # -- 3. truth: the owners' images, known to the harness alone ----------------------

    def truth(self, received: InversionReceived) -> InversionTruth:
        dataset = self._dataset()
        x_train, y_train = dataset.classifier_train()
        x_test, y_test = dataset.images(train=False)
        users, clients = self.scenario.deployment.users, self.scenario.deployment.clients
        seed = self.scenario.seed
        test_ids = np.concatenate(
            [test_partition(len(x_test), users, clients, pid, seed) for pid in received.partitions]
        )
        ids = received.training_ids
        return InversionTruth(
            x=x_test[test_ids],
            y=y_test[test_ids],
            x_train=x_train[ids],
            y_train=y_train[ids],
            dcor_x=x_test[: min(self.params.dcor_samples, len(x_test))],
        )

    # -- 4. evaluate -------------------------------------------------------------------

    def _owner_class_counts(self) -> dict[str, list[int]]:
        """Each owner's training images per digit (the harness's truth, for the report)."""
        labels = self._dataset().classifier_labels()
        d = self.scenario.deployment
        parts = train_partitions(len(labels), d.clients, self.scenario.seed, labels, d.partitioner)
        return {str(pid): row for pid, row in enumerate(class_histograms(labels, parts, 10))}

    def _releases(self) -> dict[str, int]:
        """How often one image's intermediate tensor went through the payload defences: a
        test image once, at inference; a training image once per epoch when the noise is on
        during training too (papers/003, Algorithm 1), else never."""
        releases = {"test image": 1}
        if any(s.name == "laplace" and s.params.during_training for s in self.scenario.defences):
            releases["training image"] = self.scenario.training.epochs
        return releases

    def evaluate(
        self, received: InversionReceived, truth: InversionTruth, output: InversionOutput
    ) -> Evaluation:
        p, t = self.params, self.scenario.training
        client_seg, server_seg = split_parts(self.scenario)
        client_seg.load_state_dict(
            {k: torch.from_numpy(v) for k, v in received.client_weights.items()}
        )
        client_seg.eval()
        clean_z = intermediates(client_seg, truth.x)

        def classify(z: np.ndarray) -> np.ndarray | None:
            """f2's answers; None for an interceptor, who holds no f2 (it reads the server's
            answers to the victim instead)."""
            if not received.server_weights:
                return None
            with torch.no_grad():
                return server_seg(torch.from_numpy(z)).argmax(1).numpy()

        if received.server_weights:
            server_seg.load_state_dict(
                {k: torch.from_numpy(v) for k, v in received.server_weights.items()}
            )
            server_seg.eval()
        deployed_pred = classify(received.inference_z)
        if deployed_pred is None:
            deployed_pred = received.answers
        clean_pred = classify(clean_z)
        dcor_stats = distance_correlation_batches(
            truth.dcor_x, intermediates(client_seg, truth.dcor_x), t.batch_size
        )
        with self.run.phase("evaluation", 1):
            ref_x, ref_y = self._dataset().reference_train()
            judge = reference_classifier(
                ref_x, ref_y, self.scenario.dataset.params.root, self.scenario.seed
            )
            leakage = {"inference": _leakage(judge, truth.x, output.inference, truth.y)}
            if output.training is not None:
                leakage["training"] = _leakage(judge, truth.x_train, output.training, truth.y_train)
            # After training, what Laplace noise on the test tensors would have cost and
            # saved (Fig. 2a, 4): an evaluation on the true tensors, not the attacker's view.
            sweep, sweep_pictures = [], []
            pictures = _one_per_class(truth.y)
            for i, b in enumerate(p.noise_sweep):
                noise_rng = self.seeds.rng("inversion.noise_sweep", i)
                noisy = clean_z + noise_rng.laplace(0.0, b, clean_z.shape).astype(np.float32)
                pred = classify(noisy)
                recon = reconstruct(output.decoder, noisy)
                sweep.append(
                    {"scale": b, "accuracy": None if pred is None else accuracy(pred, truth.y)}
                    | _leakage(judge, truth.x, recon, truth.y)
                )
                sweep_pictures.append(recon[pictures])
        train_pictures = _one_per_class(truth.y_train) if output.training is not None else None
        metrics = {
            "utility": {
                "accuracy": accuracy(deployed_pred, truth.y),
                "accuracy_without_inference_noise": (
                    None if clean_pred is None else accuracy(clean_pred, truth.y)
                ),
                "chance": majority_rate(truth.y),
                "test_images": len(truth.y),
                "history": received.history,
            },
            "distance_correlation": dcor_stats,
            "privacy": self.privacy("payload", self._releases()),
            "attack": {
                "access": p.access,
                **(
                    {"victim": p.victim, "interceptor": p.colluder}
                    if p.access == "intercepting"
                    else {}
                ),  # fmt: skip
                "aux_data": p.aux_data,
                "aux_size": output.aux_size,
                "adaptive": p.adaptive,
                "decoder": p.decoder,
                "defences_known": output.defences_known,
                "decoder_history": output.history,
            },
            "leakage": leakage,
            "noise_sweep": sweep,
            "training": {
                "schedule": p.schedule,
                "rounds": t.epochs,
                "task_loss": p.task_loss,
                "data_owners": self.scenario.deployment.clients,
                "train_samples": received.train_samples,
                "partitioner": self.scenario.deployment.partitioner.model_dump(),
                "owner_class_counts": self._owner_class_counts(),
                "round_trips": received.round_trips,
                "resumed_after_rounds": received.resumed_after,
                "failures": received.failures,
                "owners_left_out": received.dropped,
            },
            "wire": received.wire,
        }
        plots = {
            "originals": truth.x[pictures],
            "inference": output.inference[pictures],
            "training_originals": (
                truth.x_train[train_pictures] if train_pictures is not None else None
            ),
            "training": output.training[train_pictures] if train_pictures is not None else None,
            "labels": truth.y[pictures],
            "sweep": {
                f"{b:g}": images for b, images in zip(p.noise_sweep, sweep_pictures, strict=True)
            },
        }
        return Evaluation(metrics, plots)

    def _dataset(self) -> MNIST:
        return DATASETS.get(self.scenario.dataset.name)(
            self.scenario.dataset.params, self.scenario.seed, None
        )


def _leakage(judge: torch.nn.Module, x: np.ndarray, recon: np.ndarray, y: np.ndarray) -> dict:
    quality = image_quality(x, recon)
    return {
        **quality,
        "images": len(x),
        "reference_accuracy": accuracy(predict(judge, recon), y),
        "reference_accuracy_on_originals": accuracy(predict(judge, x), y),
    }


def _one_per_class(labels: np.ndarray) -> np.ndarray:
    """Index of the first example of each class present, in class order (the paper's figures)."""
    return np.array([int(np.argmax(labels == c)) for c in np.unique(labels)], dtype=np.int64)
