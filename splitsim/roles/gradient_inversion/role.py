"""Threat model: the honest-but-curious server of federated averaging reconstructs a
participant's training images from the update it uploads (Zhu et al., *Deep Leakage from
Gradients*, 2019; Geiping et al., *Inverting Gradients*, NeurIPS 2020; attack.py says how).

FedAvg through Flower (engine/federated.py) with ``deployment.clients`` honest participants on
MNIST. For each of ``batch_sizes``, one federated training of ``rounds`` rounds: every round each
participant trains ``local_steps`` SGD steps on its next ``batch_size`` images (protocol.py).
The server aggregates honestly, and keeps the update of participant ``target`` in round
``attack_round`` (the global weights it sent and the weights that came back).

Phases, in the order they run:

1. deploy: the trainings; what the server kept, per batch size, and its own per-round test
   accuracy of the global model;
2. attack: labels from the last layer's bias update, then images by gradient matching;
3. truth: the target's images of that round, which only the harness knows;
4. evaluate: reconstructions matched to the originals (the update does not say which is
   which), PSNR, SSIM, the independent reference classifier's accuracy on them, label recovery,
   and the global model's accuracy (what a defence costs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from splitsim.data.mnist import ATTACKER_TRAIN, CLASSIFIER, MNIST
from splitsim.engine import federated
from splitsim.errors import ScenarioError
from splitsim.metrics import image_quality
from splitsim.reference_classifier import predict, reference_classifier
from splitsim.roles.base import (
    AttackOutput,
    Evaluation,
    Received,
    Role,
    Truth,
    check_faults,
    register,
)
from splitsim.roles.gradient_inversion import attack, report
from splitsim.roles.gradient_inversion.protocol import (
    SHAPE,
    Observed,
    build_network,
    client_app,
    local_update,
    shares,
    train_config,
)
from splitsim.scenario import Deployment, Scenario, Training


@dataclass(kw_only=True)
class InversionReceived(Received):
    """Per training (one per batch size): what the server sent the target in the attacked
    round and what came back, the reply's example count and the round's instructions, and the
    server's own per-round history and failures."""

    batch_sizes: list[int]
    sent: dict[str, np.ndarray]  # "<k>/<parameter>": the global weights of training k's round
    returned: dict[str, np.ndarray]  # "<k>/<parameter>": the target's uploaded weights
    examples: list[int]
    configs: list[dict[str, float]]
    histories: list[list[dict[str, float]]]
    failures: list[list[dict[str, Any]]]

    def weights(self, which: str, k: int) -> dict[str, np.ndarray]:
        source = self.sent if which == "sent" else self.returned
        return {n.removeprefix(f"{k}/"): v for n, v in source.items() if n.startswith(f"{k}/")}


@dataclass(kw_only=True)
class InversionOutput(AttackOutput):
    labels: list[np.ndarray]  # per training: the recovered labels, sorted
    images: list[np.ndarray]  # per training: the reconstructions, (B, 1, 28, 28) in [0, 1]
    losses: list[list[float]]
    tv_weights: list[float]  # the prior each inversion used
    calibration: list[dict[str, float]]  # adaptive: PSNR on its own images per candidate


#: the adaptive server's candidate TV weights
CALIBRATION = (0.01, 0.03, 0.1, 0.3)


@dataclass(kw_only=True)
class InversionTruth(Truth):
    images: list[np.ndarray]
    labels: list[np.ndarray]
    mean_image: np.ndarray  # the training images' mean: the guess of an attacker with no update


@register("gradient_inversion")
class GradientInversionServer(Role):
    """Honest-but-curious FedAvg server that inverts a participant's update into its images."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        batch_sizes: list[int] = Field(
            [1, 8, 32], min_length=1, description="images in the attacked update, one training each"
        )
        local_steps: int = Field(1, ge=1, le=100, description="full-batch SGD steps per round")
        local_lr: float = Field(0.1, gt=0, le=10, description="participants' SGD step size")
        rounds: int = Field(10, ge=1, le=10_000, description="FedAvg rounds of each training")
        attack_round: int = Field(1, ge=1, description="the round whose update is inverted")
        target: int = Field(0, ge=0, description="partition of the attacked participant")
        iterations: int = Field(2000, ge=10, le=100_000, description="gradient-matching steps")
        tv_weight: float = Field(0.01, ge=0, le=100, description="total-variation prior weight")
        adaptive: bool = Field(False, description="the server knows the participant's defence")

        @field_validator("batch_sizes")
        @classmethod
        def _batch_sizes(cls, sizes: list[int]) -> list[int]:
            if any(not 1 <= b <= 64 for b in sizes):
                raise ValueError("each from 1 to 64")
            if len(set(sizes)) != len(sizes):
                raise ValueError("each batch size once")
            return sizes

    stages = ("update", "training")
    fault_tolerant = True  # FedAvg aggregates who answered; the target must answer its round
    gpu_clients = True
    models = {"federated": "dlg_cnn"}
    report = report
    datasets = ("mnist",)
    received_type = InversionReceived
    adaptive_override = "role.adaptive=true"
    attack_params = frozenset({"iterations", "tv_weight", "adaptive"})

    @classmethod
    def client_app(cls, scenario: Scenario, storage: str):  # noqa: ANN206
        return client_app(scenario, storage)

    @staticmethod
    def summary(metrics: dict) -> dict:
        """Matrix numbers for the first batch size: the global model's accuracy, and how
        readable the reconstructions are (chance: the reference classifier on the mean image,
        and the mean image's SSIM)."""
        head = metrics["batches"][0]
        chance = head["chance"]
        return {
            "utility": {"name": "global accuracy", "value": head["accuracy"], "chance": 0.1},
            "leakage": [
                {"name": f"reference accuracy on reconstructions (batch {head['batch_size']})",
                 "value": head["reference_accuracy"], "chance": chance["reference_accuracy"]},
                {"name": "SSIM", "value": head["ssim"], "chance": chance["ssim"]},
                {"name": "labels recovered", "value": head["label_accuracy"], "chance": 0.1},
            ],
        }  # fmt: skip

    @classmethod
    def check(cls, scenario: Scenario, source: str) -> None:
        p, d = scenario.role.params, scenario.deployment
        if scenario.training != Training():
            raise ScenarioError(
                source, "training",
                "not used by role gradient_inversion; set role.rounds, role.local_steps, "
                "role.local_lr, role.batch_sizes",
            )  # fmt: skip
        if d.users != Deployment().users:
            raise ScenarioError(
                source, "deployment.users", "not used by role gradient_inversion; remove it"
            )
        if p.target >= d.clients:
            raise ScenarioError(
                source, "role.target", f"must be below deployment.clients ({d.clients})"
            )
        if p.attack_round > p.rounds:
            raise ScenarioError(source, "role.attack_round", f"at most role.rounds ({p.rounds})")
        limit = scenario.dataset.params.train_limit
        images = CLASSIFIER[1] if limit is None else min(limit, CLASSIFIER[1])
        share = images // d.clients
        if p.rounds * max(p.batch_sizes) > share:
            raise ScenarioError(
                source, "role.rounds",
                f"at most {share // max(p.batch_sizes)}: each participant trains on "
                f"{max(p.batch_sizes)} new images a round and holds {share}",
            )  # fmt: skip
        check_faults(scenario, source, ("train", "evaluate"), "federated training", d.clients,
                     f"participants are 0-{d.clients - 1}")  # fmt: skip
        e = scenario.engine
        for i, fault in enumerate(e.faults):
            # the one update the attack needs must arrive; found out after training otherwise
            recovers = e.on_client_failure == "retry" and fault.attempts <= e.client_retries
            if (fault.phase == "train" and fault.partition == p.target
                    and p.attack_round in fault.rounds and not recovers):  # fmt: skip
                raise ScenarioError(
                    source, f"engine.faults.{i}",
                    f"participant {p.target} must answer round {p.attack_round}: its update is "
                    "what the server inverts (allowed: a fault the 'retry' policy recovers from)",
                )  # fmt: skip
        cls._check_network(scenario, source)

    @staticmethod
    def _check_network(scenario: Scenario, source: str) -> None:
        """The attack reads the labels from the last parameter, a bias over the 10 classes, and
        flattens updates by parameter name: a network with buffers or another head is refused."""
        try:
            net = build_network(scenario)
        except Exception as err:  # noqa: BLE001 (a model's own constructor says what it needs)
            raise ScenarioError(source, "models.federated", str(err)) from None
        if not isinstance(net, torch.nn.Module):
            raise ScenarioError(
                source, "models.federated.name",
                f"{scenario.models.federated.name!r} is not one network (allowed: a "
                "classifier without buffers ending in a 10-class bias: dlg_cnn, probe_cnn, "
                "lenet, feature_mlp)",
            )  # fmt: skip
        names = [n for n, _ in net.named_parameters()]
        last = dict(net.named_parameters())[names[-1]] if names else None
        if (list(net.state_dict()) != names or last is None
                or not names[-1].endswith("bias") or tuple(last.shape) != (10,)):  # fmt: skip
            raise ScenarioError(
                source, "models.federated.name",
                f"{scenario.models.federated.name!r} does not fit: the attack needs a network "
                "without buffers whose last parameter is the 10-class output bias (allowed: "
                "dlg_cnn, probe_cnn, lenet, feature_mlp)",
            )  # fmt: skip

    # -- 1. deploy: one federated training per batch size -------------------------------

    def deploy(self) -> InversionReceived:
        p, scenario = self.params, self.scenario
        x_test, y_test = MNIST(scenario.dataset.params, scenario.seed, None).images(train=False)
        sent: dict[str, np.ndarray] = {}
        returned: dict[str, np.ndarray] = {}
        got: dict[str, list] = {k: [] for k in ("examples", "configs", "histories", "failures")}
        for k, batch in enumerate(p.batch_sizes):
            torch.manual_seed(self.seeds.int("gradient.init"))
            initial = {
                n: v.detach().numpy().copy()
                for n, v in build_network(scenario).state_dict().items()
            }

            def evaluate_global(weights: dict[str, np.ndarray]) -> dict[str, float]:
                net = build_network(scenario)
                net.load_state_dict({n: torch.from_numpy(v) for n, v in weights.items()})
                net.eval()
                return {"accuracy": float((predict(net, x_test) == y_test).mean())}

            outcome = federated.FederatedOutcome()
            observed = Observed(partition=p.target, round=p.attack_round)
            label = f"FedAvg, batch {batch}"
            with self.run.phase(label, 2 * p.rounds) as advance:
                server = federated.server_app(
                    initial, p.rounds, scenario.deployment.clients, evaluate_global, self.wire,
                    outcome, lambda rnd, phase: advance(), scenario.engine, f"batch {batch} ",
                    experiment=k, train_config=train_config(scenario, batch), observe=observed,
                )  # fmt: skip
                self.flower(server, outcome, timing=label)
            if not observed.returned:
                raise RuntimeError(
                    f"participant {p.target} did not answer round {p.attack_round}: no update "
                    "to invert (see the run's failures)"
                )
            sent.update({f"{k}/{n}": v for n, v in observed.sent.items()})
            returned.update({f"{k}/{n}": v for n, v in observed.returned.items()})
            got["examples"].append(observed.examples)
            got["configs"].append(observed.config)
            got["histories"].append(outcome.history)
            got["failures"].append(outcome.failures)
        return InversionReceived(
            batch_sizes=list(p.batch_sizes), sent=sent, returned=returned,
            examples=got["examples"], configs=got["configs"], histories=got["histories"],
            failures=got["failures"],
        )  # fmt: skip

    # -- 2. attack: labels, then images ---------------------------------------------------

    def attack(self, received: InversionReceived) -> InversionOutput:
        out = InversionOutput(labels=[], images=[], losses=[], tv_weights=[], calibration=[])
        for k, batch in enumerate(received.batch_sizes):
            with self.run.phase(f"inverting batch {batch}", None):
                self._invert(received, k, out)
        return out

    def _invert(self, received: InversionReceived, k: int, out: InversionOutput) -> None:
        p = self.params
        config = received.configs[k]
        lr, steps, examples = float(config["lr"]), int(config["local-steps"]), received.examples[k]
        net = build_network(self.scenario)
        start = received.weights("sent", k)
        net.load_state_dict({n: torch.from_numpy(v) for n, v in start.items()})
        probs = attack.mean_probabilities(net, SHAPE, self.seeds.int("gradient.attack", k, 0))

        def update_and_labels(after: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            names = [n for n, _ in net.named_parameters()]
            flat = np.concatenate([(after[n] - start[n]).ravel() for n in names])
            bias = names[-1]  # the last layer's bias: the labels' trace (iDLG)
            found = attack.recover_labels(after[bias] - start[bias], lr=lr, steps=steps,
                                          batch=examples, mean_probs=probs)  # fmt: skip
            return flat, found

        update, found = update_and_labels(received.weights("returned", k))
        knowledge = self._knowledge() if p.adaptive else attack.Knowledge()
        seed = self.seeds.int("gradient.attack", k, 1)
        settings = attack.Settings(
            lr=lr, steps=steps, iterations=p.iterations, tv_weight=p.tv_weight, seed=seed,
            knowledge=knowledge,
        )  # fmt: skip
        calibration: dict[str, float] = {}
        if p.adaptive and self.scenario.defences:
            # its own images through the participant's round and defence, as the defence's
            # settings say; it keeps the prior that reconstructs them best
            own_x, own_y = self._own_images(examples, k)
            noise = self.seeds.rng("gradient.attacker_images", k, 2)
            simulated = local_update(self.scenario, start, own_x, own_y, steps=steps, lr=lr,
                                     seed=self.seeds.int("gradient.attacker_images", k, 1),
                                     noise=noise)  # fmt: skip
            own_update, own_labels = update_and_labels(simulated)
            best, calibration = attack.calibrate(net, start, own_x, own_update, own_labels, SHAPE,
                                                 settings, CALIBRATION)  # fmt: skip
            settings = replace(settings, tv_weight=best)
        recon, history = attack.invert(net, start, update, found, SHAPE, settings)
        out.labels.append(found)
        out.images.append(recon.astype(np.float32))
        out.losses.append(history)
        out.tv_weights.append(settings.tv_weight)
        out.calibration.append(calibration)

    def _own_images(self, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """A batch of the server's own MNIST images (the paper split's attacker range, which no
        participant holds)."""
        x, y = MNIST(self.scenario.dataset.params, self.scenario.seed, None).images(train=True)
        lo, hi = ATTACKER_TRAIN
        ids = lo + self.seeds.rng("gradient.attacker_images", k, 0).choice(
            hi - lo, n, replace=False
        )
        return x[ids], y[ids]

    def _knowledge(self) -> attack.Knowledge:
        """What an adaptive server knows of the participants' defences (both, when DP-SGD and
        update noise are stacked)."""
        from splitsim.defences import build

        found: dict = {}
        for defence in build(self.scenario.defences):
            q = defence.params
            if defence.name == "dp_sgd":
                found.update(example_clip=q.max_grad_norm, noise_multiplier=q.noise_multiplier,
                             noise=found.get("noise", "gaussian"))  # fmt: skip
            elif defence.name == "update_noise":
                found.update(update_clip=q.clip, noise=q.mechanism, noise_scale=q.scale)
        return attack.Knowledge(**found)

    # -- 3. truth: the target's images, known to the harness alone ------------------------

    def truth(self, received: InversionReceived) -> InversionTruth:
        data = shares(self.scenario)
        p = self.params
        batches = [data.batch(p.target, p.attack_round, b) for b in received.batch_sizes]
        return InversionTruth(
            images=[data.x[ids] for ids in batches],
            labels=[data.y[ids] for ids in batches],
            mean_image=data.x.mean(axis=0),
        )

    # -- 4. evaluate -----------------------------------------------------------------------

    def evaluate(
        self, received: InversionReceived, truth: InversionTruth, output: InversionOutput
    ) -> Evaluation:
        p = self.params
        dataset = MNIST(self.scenario.dataset.params, self.scenario.seed, None)
        judge = reference_classifier(*dataset.reference_train(), dataset.params.root,
                                     self.scenario.seed)  # fmt: skip
        rows, pictures = [], []
        for k, batch in enumerate(received.batch_sizes):
            originals, true_labels = truth.images[k], truth.labels[k]
            recon = output.images[k]
            rec_idx, orig_idx = attack.pair(recon, originals)
            paired, paired_orig = recon[rec_idx], originals[orig_idx]
            paired_labels = true_labels[orig_idx]
            quality = image_quality(paired_orig, paired)
            blank = np.repeat(truth.mean_image[None], len(originals), axis=0)
            chance = image_quality(originals, blank)
            found = np.bincount(output.labels[k], minlength=10)
            real = np.bincount(true_labels, minlength=10)
            rows.append({
                "batch_size": batch,
                "images": int(received.examples[k]),
                "local_steps": int(received.configs[k]["local-steps"]),
                "psnr": quality["psnr"], "ssim": quality["ssim"], "mse": quality["mse"],
                "reference_accuracy": float((predict(judge, paired) == paired_labels).mean()),
                "label_accuracy": float(np.minimum(found, real).sum() / len(true_labels)),
                "accuracy": received.histories[k][-1]["accuracy"],
                "accuracy_history": [h["accuracy"] for h in received.histories[k]],
                "loss_history": output.losses[k],
                "tv_weight": output.tv_weights[k],
                "calibration": output.calibration[k],
                "chance": {
                    "psnr": chance["psnr"], "ssim": chance["ssim"], "mse": chance["mse"],
                    "reference_accuracy": float(
                        (predict(judge, blank) == true_labels).mean()
                    ),
                },
            })  # fmt: skip
            shown = min(batch, 16)
            pictures.append({"batch_size": batch, "originals": paired_orig[:shown],
                             "reconstructions": paired[:shown]})  # fmt: skip
        size = sum(t.numel() for t in build_network(self.scenario).parameters())
        privacy = self.privacy("update", {"participant": p.rounds}, size=size) + self.privacy(
            "training", {"image": p.local_steps}, sample_rate=1.0
        )
        failures = [
            {"batch_size": b, **f}
            for b, fails in zip(received.batch_sizes, received.failures, strict=True)
            for f in fails
        ]
        metrics = {
            "batches": rows,
            "attacker": {
                "adaptive": p.adaptive,
                "iterations": p.iterations,
                "tv_weight": p.tv_weight,
                "target": p.target,
                "attack_round": p.attack_round,
            },  # fmt: skip
            "training": {
                "participants": self.scenario.deployment.clients,
                "rounds": p.rounds,
                "local_steps": p.local_steps,
                "local_lr": p.local_lr,
            },  # fmt: skip
            "defences": {
                "epsilon": next((b["epsilon"] for b in privacy), None),
                "adaptive": p.adaptive,
            },  # fmt: skip
            "privacy": privacy,
            "failures": failures,
            "wire": received.wire,
        }
        return Evaluation(metrics, {"pictures": pictures})
