"""Threat model: the supplier of the training code makes the model remember the owners' training
images (papers/002, section 3, "Intentional leakage"; Song, Ristenpart, Shmatikov, CCS 2017).

The data owners train on their private images (MNIST or Fashion-MNIST training images) with the
supplier's training code, through Flower FedAvg (protocol.py); the model is then published
(white-box: ``encoding: correlation | sign``) or served (black-box: ``capacity_abuse``) by one
owner, and the supplier reads the images back from what it gets (attack.py says how).

Phases, in the order they run:

1. deploy: for the supplier's code, then (``compare_honest``) for honest code on the same data
   and settings, one federated training and its serving, one Flower phase each; the supplier
   receives the published weights or the served model's answers to its queries;
2. attack: the supplier's decoder on what it received, for each training (on the honest one it
   shows what the same decoder reads from a model that was never told the secret);
3. truth: the owners' secret images, which only the harness sees;
4. evaluate: the official test accuracy of the served model beside the honest one's; the
   recovered images' MSE, PSNR, SSIM and an independent classifier's accuracy on them; the
   secret bits recovered; for capacity abuse, bits per query and queries needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from splitsim.data.mnist import REFERENCE
from splitsim.errors import ScenarioError
from splitsim.metrics import accuracy, image_quality, majority_rate
from splitsim.reference_classifier import predict, reference_classifier
from splitsim.registry import DEFENCES, MODELS
from splitsim.roles.base import (
    AttackOutput,
    Evaluation,
    Received,
    Role,
    Truth,
    register,
)
from splitsim.roles.malicious_training import attack, report
from splitsim.roles.malicious_training.protocol import (
    EXPERIMENTS,
    TrainingOutcome,
    client_app,
    codes,
    images,
    network,
    owner_data,
    parameter_names,
    server_app,
    supplier_code,
    test_accuracy,
)
from splitsim.scenario import Deployment, Scenario, Training

WHITE_BOX = ("correlation", "sign")
WHITE_BOX_STAGES = ("release", "weights")  # the defences that act on the published weights
# Augmented inputs per owner (capacity abuse, times the adaptive supplier's passes): each is a
# 28x28 float32 image, held about twice while an owner builds its training set, so 100,000 is
# about 0.6 GB per owner, about 190 times the default scenario's 523 and 50 times its owners'
# real images; 1,000 1-bit 28x28 images an owner would need 261,334 inputs (several GB across
# owners: a run that dies mid-training).
MAX_AUGMENTED = 100_000


@dataclass(kw_only=True)
class MaliciousReceived(Received):
    """Per training (the supplier's code, then honest code): the published weights (white-box)
    or the served model's answers to the supplier's queries, one array per owner's inputs
    (black-box). That is all the supplier's ``attack()`` reads.

    ``histories`` (the honest aggregator's per-round test accuracy), ``served_accuracy`` (the
    host's test accuracy of what it serves) and ``failures`` are harness bookkeeping: they never
    reached the supplier and ``attack()`` never reads them (a test blanks them and gets the same
    output). They are kept here because only the deployment produces them (the served model
    leaves the host only as weights or answers) and a re-attack must report them as the run did.
    """

    experiments: list[str]
    published: dict[str, np.ndarray]  # "<k>/<parameter>": training k's published weights
    answers: dict[str, np.ndarray]  # "<k>/<owner>": class scores, NaN where refused
    histories: list[list[dict[str, float]]]  # harness bookkeeping, never read by attack()
    served_accuracy: list[float]  # harness bookkeeping, never read by attack()
    failures: list[list[dict[str, Any]]]  # harness bookkeeping, never read by attack()

    def weights(self, k: int) -> dict[str, np.ndarray]:
        return {n.removeprefix(f"{k}/"): v for n, v in self.published.items()
                if n.startswith(f"{k}/")}  # fmt: skip


@dataclass(kw_only=True)
class Recovery:
    images: np.ndarray  # (owners * secrets, 1, 28, 28)
    bits: np.ndarray | None  # the secret bits read back (sign, capacity abuse)


@dataclass(kw_only=True)
class MaliciousOutput(AttackOutput):
    recovered: list[Recovery]  # per training


@dataclass(kw_only=True)
class MaliciousTruth(Truth):
    x: np.ndarray  # the secret images, owner by owner
    y: np.ndarray
    bits: np.ndarray | None  # the secret bits the code encoded (sign, capacity abuse)


@register("malicious_training")
class MaliciousTrainingCode(Role):
    """Supplier whose training code makes the model remember the owners' training images."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        encoding: Literal["correlation", "sign", "capacity_abuse"] = Field(
            "capacity_abuse",
            description="correlation, sign (white-box: published weights) or capacity_abuse "
            "(black-box: queries to the served model)",
        )
        secrets: int = Field(4, ge=1, le=1000, description="images of each owner the code encodes")
        bits: int = Field(
            1, ge=1, le=8, description="bits per pixel of the encoded image (sign, capacity)"
        )
        pool: Literal[1, 2, 4] = Field(2, description="average-pool the secret images this much")
        lambda_corr: float = Field(1.0, gt=0, le=1e4, description="correlation term's weight")
        lambda_sign: float = Field(10.0, gt=0, le=1e4, description="sign penalty's weight")
        sign_margin: float = Field(
            0.01, ge=0, le=1, description="sign penalty's margin (0: the paper's; see attack.py)"
        )
        train_images: int = Field(2000, ge=20, le=50_000, description="images of all owners")
        rounds: int = Field(10, ge=1, le=10_000, description="FedAvg rounds")
        local_epochs: int = Field(3, ge=1, le=1000)
        local_batch_size: int = Field(64, ge=1, le=100_000)
        local_lr: float = Field(1e-3, gt=0, le=10, description="Adam's learning rate")
        query_batch: int = Field(512, ge=1, le=100_000, description="inputs per query message")
        compare_honest: bool = Field(
            True, description="also train with honest code on the same data (the baseline)"
        )
        adaptive: bool = Field(
            False, description="the supplier knows the owners' defences and codes against them"
        )

    stages = ("release", "weights", "payload", "budget")
    models = {"federated": "feature_mlp"}
    report = report
    datasets = ("mnist", "fashion_mnist")
    received_type = MaliciousReceived
    adaptive_override = "role.adaptive=true"

    @classmethod
    def client_app(cls, scenario: Scenario, storage: str):  # noqa: ANN206
        return client_app(scenario, storage)

    @staticmethod
    def summary(metrics: dict) -> dict:
        """Matrix numbers: the served model's official test accuracy under the supplier's code;
        leakage: an independent classifier's accuracy on the recovered images (headline) and
        their SSIM."""
        head = metrics["trainings"][0]
        return {
            "utility": {"name": "test accuracy", "value": head["test_accuracy"],
                        "chance": metrics["chance"]["test"]},
            "leakage": [
                {"name": "reference accuracy on recovered images",
                 "value": head["recovery"]["reference_accuracy"],
                 "chance": metrics["chance"]["secrets"]},
                {"name": "SSIM", "value": head["recovery"]["ssim"], "chance": 0.0},
            ],
        }  # fmt: skip

    @classmethod
    def check(cls, scenario: Scenario, source: str) -> None:
        p = scenario.role.params
        name = scenario.role.name
        if scenario.training != Training():
            raise ScenarioError(
                source, "training", f"not used by role {name}; set role.rounds, "
                "role.local_epochs, role.local_batch_size, role.local_lr",
            )  # fmt: skip
        if scenario.deployment.users != Deployment().users:
            raise ScenarioError(source, "deployment.users",
                                f"not used by role {name}; set role.train_images")  # fmt: skip
        if scenario.dataset.params.train_limit is not None:
            raise ScenarioError(source, "dataset.train_limit",
                                f"not used by role {name}; set role.train_images")  # fmt: skip
        clients = scenario.deployment.clients
        if p.train_images // clients < p.secrets:
            raise ScenarioError(
                source, "role.secrets",
                f"at most {p.train_images // clients}: each of {clients} owners holds "
                f"{p.train_images // clients} of role.train_images ({p.train_images})",
            )  # fmt: skip
        _check_model(scenario, source)
        code = supplier_code(scenario)
        if p.encoding == "capacity_abuse":
            need = code.queries * code.repeat
            if need > MAX_AUGMENTED:
                most = MAX_AUGMENTED // code.repeat * code.symbol_bits // (code.pixels * code.bits)
                need_text = f"{p.secrets} images an owner need {code.queries:,} augmented inputs"
                if code.repeat > 1:
                    need_text += f" x {code.repeat} passes (1 + the fine_tune epochs) = {need:,}"
                if most == 0:
                    raise ScenarioError(
                        source, "role.adaptive",
                        f"false, or fewer fine_tune epochs: {need_text}, over the "
                        f"{MAX_AUGMENTED:,} an owner may train on",
                    )  # fmt: skip
                raise ScenarioError(
                    source, "role.secrets",
                    f"at most {most} with role.bits {p.bits} and role.pool {p.pool}: "
                    f"{need_text}, over the {MAX_AUGMENTED:,} an owner may train on",
                )  # fmt: skip
        if p.encoding in WHITE_BOX:
            # the published weights are all the supplier reads: a defence on the served
            # model's answers (or their count) would be accepted and never applied
            allowed = ", ".join(n for n, d in DEFENCES.items() if d.stage in WHITE_BOX_STAGES)
            for i, d in enumerate(scenario.defences):
                stage = DEFENCES.get(d.name).stage
                if stage not in WHITE_BOX_STAGES:
                    raise ScenarioError(
                        source, f"defences.{i}.name",
                        f"{d.name!r} acts on the served model's answers (stage {stage}); with "
                        f"role.encoding {p.encoding} the supplier reads the published weights; "
                        f"allowed: {allowed}",
                    )  # fmt: skip
            with torch.random.fork_rng(devices=[]):
                size = sum(t.numel() for t in network(scenario).parameters())
            need = code.segment_length * clients
            if need > size:
                most = size // (code.segment_length // p.secrets * clients)
                raise ScenarioError(
                    source, "role.secrets",
                    f"at most {most} for this model: {clients} owners x {p.secrets} images "
                    f"need {need:,} parameters, the model has {size:,}",
                )  # fmt: skip

    # -- 1. deploy: one training (and its serving) per code ---------------------------

    def deploy(self) -> MaliciousReceived:
        p, scenario = self.params, self.scenario
        torch.manual_seed(self.seeds.int("malicious.init"))
        net0 = network(scenario)
        initial = {n: v.detach().numpy().copy() for n, v in net0.state_dict().items()}

        def evaluate_global(weights: dict[str, np.ndarray]) -> dict[str, float]:
            # the honest aggregator's own evaluation on the official test set
            net = network(scenario)
            net.load_state_dict({n: torch.from_numpy(v.copy()) for n, v in weights.items()})
            return {"accuracy": test_accuracy(net, scenario)}

        trainings = len(codes(scenario))
        outcomes = [TrainingOutcome() for _ in range(trainings)]
        label = "FedAvg with the supplier's code" + (", then honest code" if trainings > 1 else "")
        with self.run.phase(label, 2 * p.rounds * trainings) as advance:
            server = server_app(scenario, initial, evaluate_global, self.wire, outcomes,
                                lambda rnd, phase: advance())  # fmt: skip
            self.flower(server, outcomes[0], timing=label)
        published: dict[str, np.ndarray] = {}
        answers: dict[str, np.ndarray] = {}
        for k, outcome in enumerate(outcomes):
            if outcome.served_accuracy is None:
                raise RuntimeError("the Flower ServerApp ended before the model was served")
            if outcome.published is not None:
                published.update({f"{k}/{n}": v for n, v in outcome.published.items()})
            answers.update({f"{k}/{j}": a for j, a in enumerate(outcome.answers)})
        return MaliciousReceived(
            experiments=[EXPERIMENTS[k] for k in range(trainings)],
            published=published,
            answers=answers,
            histories=[o.history for o in outcomes],
            served_accuracy=[o.served_accuracy for o in outcomes],
            failures=[o.failures for o in outcomes],
        )

    # -- 2. attack: the supplier's decoder, per training ------------------------------

    def attack(self, received: MaliciousReceived) -> MaliciousOutput:
        code = supplier_code(self.scenario)
        clients = self.scenario.deployment.clients
        recovered = []
        for k in range(len(received.experiments)):
            if code.encoding == "capacity_abuse":
                bits = [attack.capacity_decode(code, j, received.answers[f"{k}/{j}"])
                        for j in range(clients)]  # fmt: skip
                stream = np.concatenate(bits)
                levels = attack.from_bits(stream, code.bits)
                images = attack.dequantise(levels, code.bits, code.pool)
                recovered.append(Recovery(images=images, bits=stream))
            else:
                images, stream = attack.whitebox_decode(
                    code, received.weights(k), parameter_names(self.scenario), clients,
                    self._public_pixels(),
                )  # fmt: skip
                recovered.append(Recovery(images=images, bits=stream))
        return MaliciousOutput(recovered=recovered)

    def _public_pixels(self) -> tuple[float, float]:
        """The data set's pixel mean and deviation, from its public test set: what the supplier
        knows of images in general, to scale decoded values (correlation)."""
        x, _ = images(self.scenario, train=False)
        x = attack.pooled(x, self.params.pool)
        return float(x.mean()), float(x.std())

    # -- 3. truth: the owners' secret images ------------------------------------------

    def truth(self, received: MaliciousReceived) -> MaliciousTruth:
        code = supplier_code(self.scenario)
        xs, ys = [], []
        for pid in range(self.scenario.deployment.clients):
            x, y = owner_data(self.scenario, pid)
            xs.append(x[: code.secrets])
            ys.append(y[: code.secrets])
        x = np.concatenate(xs)
        bits = None
        if code.encoding != "correlation":
            bits = attack.to_bits(attack.quantise(x, code.bits, code.pool), code.bits)
        return MaliciousTruth(x=x, y=np.concatenate(ys), bits=bits)

    # -- 4. evaluate ------------------------------------------------------------------

    def evaluate(
        self, received: MaliciousReceived, truth: MaliciousTruth, output: MaliciousOutput
    ) -> Evaluation:
        p, scenario = self.params, self.scenario
        code = supplier_code(scenario)
        clients = scenario.deployment.clients
        with self.run.phase("evaluation", 1):
            x_ref, y_ref = images(scenario, train=True)
            judge = reference_classifier(
                x_ref[REFERENCE[0] : REFERENCE[1]], y_ref[REFERENCE[0] : REFERENCE[1]],
                scenario.dataset.params.root, scenario.seed, key=scenario.dataset.name,
            )  # fmt: skip

            def quality(images: np.ndarray) -> dict[str, float]:
                judged = accuracy(predict(judge, images), truth.y)
                return {**image_quality(truth.x, images), "reference_accuracy": judged}

            trainings = []
            for k, name in enumerate(received.experiments):
                rec = output.recovered[k]
                recovery: dict[str, Any] = quality(rec.images)
                if rec.bits is not None and truth.bits is not None:
                    recovery["bit_accuracy"] = float((rec.bits == truth.bits).mean())
                history = received.histories[k]
                trainings.append({
                    "code": name,
                    "test_accuracy": received.served_accuracy[k],
                    "trained_accuracy": history[-1]["accuracy"] if history else None,
                    "accuracy_history": [h["accuracy"] for h in history],
                    "recovery": recovery,
                })  # fmt: skip
            # what a perfect read-back of this encoding gives: the resolution it stores
            ceiling = quality(attack.secret_images(code, truth.x))
        capacity = None
        if code.encoding == "capacity_abuse":
            answers = [received.answers[f"0/{j}"] for j in range(clients)]
            answered = int(sum(np.isfinite(a).all(axis=1).sum() for a in answers))
            ber = 1 - trainings[0]["recovery"]["bit_accuracy"]
            capacity = {
                "bits_per_query": code.symbol_bits,
                "queries_needed": code.queries * clients,
                "queries_per_image": code.queries / code.secrets,
                "queries_answered": answered,
                "bits_per_image": code.pixels * code.bits,
                # the channel's capacity at the measured bit error rate (binary symmetric)
                "information_bits_per_query": code.symbol_bits * (1 - _entropy(ber)),
            }
        honest = trainings[1] if len(trainings) > 1 else None
        x_test, y_test = images(scenario, train=False)
        metrics = {
            "encoding": code.encoding,
            "trainings": trainings,
            "accuracy_cost": (None if honest is None
                              else honest["test_accuracy"] - trainings[0]["test_accuracy"]),
            "ceiling": ceiling,
            "capacity": capacity,
            "secrets": {"owners": clients, "per_owner": code.secrets, "images": len(truth.x),
                        "bits_per_pixel": code.bits, "pool": code.pool,
                        "side": code.side},
            "chance": {"test": majority_rate(y_test), "secrets": majority_rate(truth.y),
                       "bits": 0.5},
            "defences": {"adaptive": p.adaptive, "sigma_known": code.sigma},
            "failures": [f for fails in received.failures for f in fails],
            "wire": received.wire,
        }  # fmt: skip
        show = np.arange(min(len(truth.x), 16))
        plots = {
            "originals": truth.x[show],
            "ceiling": attack.secret_images(code, truth.x[show]),
            "recovered": [(f"{t['code']} code", output.recovered[k].images[show])
                          for k, t in enumerate(trainings)],
        }  # fmt: skip
        return Evaluation(metrics, plots)


def _fits(net: object) -> bool:
    """Whether the role can train and read ``net``: one torch module whose state dict is its
    parameters (what the owners send, the host publishes and the white-box segments index, in
    one order) and which maps a batch of 1x28x28 images to 10 class scores."""
    if not isinstance(net, torch.nn.Module):
        return False
    if list(net.state_dict()) != [n for n, _ in net.named_parameters()]:
        return False
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(2, 1, 28, 28))
    except (RuntimeError, TypeError, ValueError):
        return False
    return isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 10)


def _check_model(scenario: Scenario, source: str) -> None:
    with torch.random.fork_rng(devices=[]):  # building draws initial weights
        if _fits(network(scenario)):
            return
        fitting = []
        for name, model in MODELS.items():
            try:
                fits = _fits(model.build(model.Params(), (1, 28, 28), 10))
            except Exception:  # noqa: BLE001 - a model that cannot build here does not fit
                fits = False
            if fits:
                fitting.append(name)
    raise ScenarioError(
        source, "models.federated.name",
        f"{scenario.models.federated.name!r} does not fit role {scenario.role.name}, which needs "
        "one network without buffers mapping 1x28x28 images to 10 classes; allowed: "
        + ", ".join(fitting),
    )  # fmt: skip


def _entropy(p: float) -> float:
    if p <= 0 or p >= 1:
        return 0.0
    return float(-p * np.log2(p) - (1 - p) * np.log2(1 - p))
