"""Threat model: a malicious split-learning server hijacks the owners' training (FSHA), and the
owners' SplitGuard watches for it.

Phases, in the order they run:

1. deploy: split training over Flower (protocol.py, the exchange of engine/split_training.py).
   The owners send the labels with each batch (vanilla SplitNN, ``deployment.labels: owner``,
   SplitGuard's setting) or the server holds them. The server answers every batch through
   attack.py's ``Hijacker``: FSHA's gradient (``server: fsha``; Pasquini et al., CCS
   2021) or the task gradient (``server: honest``). Every ``record_every``-th owner batch it
   keeps the tensor it received. Owners running SplitGuard stop when it fires; after inference
   each hands the harness its log. What the server holds is ``HijackReceived``;
2. attack: reconstruct the images behind the kept training tensors and the owners' inference
   tensors. FSHA decodes with its pilot's inverse f~^-1; the honest server is the *passive*
   inversion server of papers/003 (Appendix A, "obtained alone"): it trains a decoder on its
   public images through the segment it relayed by FedAvg (model_inversion/attack.py);
3. truth: the owners' training and test images, which only the harness knows;
4. evaluate: MSE / PSNR / SSIM and the reference classifier's accuracy on the reconstructions,
   per recorded batch (how far the hijack had gone) and over the last ones; the server's task
   accuracy on the owners' test images; SplitGuard's verdicts (detection rate against FSHA,
   false alarms against the honest server), the batch at which each owner stopped and its
   scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from splitsim.data.mnist import MNIST, aux_images
from splitsim.data.partitions import test_partition, train_partitions
from splitsim.decoding import reconstruct
from splitsim.defences import build as build_defences
from splitsim.engine.resources import resolve_device
from splitsim.engine.split_training import SplitOutcome, split_parts
from splitsim.errors import ScenarioError
from splitsim.metrics import accuracy, image_quality, majority_rate
from splitsim.models.split_cnn import decoder_for, sent_width
from splitsim.reference_classifier import predict, reference_classifier
from splitsim.registry import DATASETS
from splitsim.roles.base import (
    AttackOutput,
    Evaluation,
    Received,
    Role,
    Truth,
    check_faults,
    register,
)
from splitsim.roles.model_inversion.attack import train_decoder
from splitsim.roles.split_hijacking import report
from splitsim.roles.split_hijacking.protocol import client_app, guarded, server_app
from splitsim.scenario import Scenario

MNIST_TEST = 10_000
LAST = 5  # recorded batches the headline reconstruction numbers average over


@dataclass(kw_only=True)
class HijackReceived(Received):
    """What the server holds: the owners' inference tensors and the training tensors it kept
    (with their ids, owners and batch numbers), the segment it relayed, its own networks (FSHA's
    pilot and inverse; its f2), how training went; and, for the harness, the owners' SplitGuard
    logs, which the attack does not read."""

    partitions: list[int]  # owners in the order their inference tensors are stacked
    inference_z: np.ndarray
    kept_z: np.ndarray  # training tensors, every record_every-th owner batch
    kept_ids: np.ndarray
    kept_owner: np.ndarray
    kept_batch: np.ndarray  # the server's count of owner batches when it arrived
    client_weights: dict[str, np.ndarray]
    server_weights: dict[str, np.ndarray]
    pilot: dict[str, np.ndarray]
    inverse: dict[str, np.ndarray]
    history: list[dict[str, float]]
    losses: list[dict[str, float]]
    batches: int
    honest_answers: int
    stopped: dict[str, dict[str, int]] = field(default_factory=dict)
    detector: dict[str, np.ndarray] = field(default_factory=dict)
    round_trips: int = 0


@dataclass(kw_only=True)
class HijackOutput(AttackOutput):
    kept: np.ndarray  # reconstructions of the kept training tensors
    inference: np.ndarray
    decoder_history: list[dict[str, float]]


@dataclass(kw_only=True)
class HijackTruth(Truth):
    x_kept: np.ndarray
    y_kept: np.ndarray
    x: np.ndarray  # the inference images, in HijackReceived.partitions order
    y: np.ndarray


@register("split_hijacking")
class HijackingServer(Role):
    """Split-learning server that hijacks the owners' segment (FSHA), or an honest one."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        server: Literal["fsha", "honest"] = Field(
            "fsha", description="fsha: returns its own adversarial gradient; honest: the task's"
        )
        adaptive: bool = Field(
            False, description="FSHA knows SplitGuard: honest warm-up, fakes answered honestly"
        )
        warmup: int = Field(100, ge=0, le=1_000_000, description="adaptive: honest batches first")
        screen: float = Field(
            0.5, ge=0, le=1, description="adaptive: answer honestly below this batch accuracy"
        )
        schedule: Literal["parallel", "sequential"] = Field(
            "parallel", description="SplitFed (all owners each step, FedAvg) or owners in turn"
        )
        aux_size: int = Field(5000, ge=10, le=5000, description="server's public MNIST images")
        val_size: int = Field(1000, ge=10, le=5000, description="honest: its decoder's validation")
        passive_segment: Literal["relayed", "surrogate"] = Field(
            "relayed",
            description="honest: invert through the segment it averaged (SplitFed), or through "
            "a surrogate it trains itself on its public images (owners that keep f1 private)",
        )
        decoder: Literal["paper", "deep"] = Field("paper", description="f~^-1's architecture")
        decoder_epochs: int = Field(10, ge=1, le=1000, description="honest: its decoder's epochs")
        lr_pilot: float = Field(
            1e-3, gt=0, le=1, description="Adam rate of f~ and f~^-1 (honest: of its decoder)"
        )
        lr_critic: float = Field(1e-3, gt=0, le=1, description="Adam rate of the critic D")
        gradient_penalty: float = Field(10.0, ge=0, le=1e4, description="WGAN-GP's lambda")
        critic_hidden: int = Field(256, ge=8, le=8192, description="the critic's width")
        record_every: int = Field(
            10, ge=1, le=100_000, description="keep every n-th owner batch's tensor"
        )
        reconstructions: int = Field(
            1000, ge=10, le=MNIST_TEST, description="inference images scored"
        )

    stages = ("detector", "payload", "loss")
    models = {"split": "split_cnn"}
    report = report
    datasets = ("mnist",)
    label_holders = ("owner", "server")
    received_type = HijackReceived
    adaptive_override = "role.adaptive=true"
    attack_params = frozenset(
        {"decoder_epochs", "val_size", "reconstructions", "lr_pilot", "passive_segment"}
    )

    @classmethod
    def client_app(cls, scenario: Scenario, storage: str, keep: str | None = None):  # noqa: ANN206
        return client_app(scenario, storage, keep)

    @classmethod
    def attack_params_for(cls, scenario: Scenario) -> frozenset[str]:
        """FSHA's inverse was trained during deployment: only what is scored can change."""
        if scenario.role.params.server == "fsha":
            return frozenset({"reconstructions"})
        return cls.attack_params

    @staticmethod
    def summary(metrics: dict) -> dict:
        """The comparison matrix's numbers: the server's task accuracy; leakage as the
        reference classifier's accuracy on the last kept batches' reconstructions (headline)
        and their SSIM; then SplitGuard's detection rate where the owners ran it."""
        u, last = metrics["utility"], metrics["leakage"]["last"]
        # a server that kept nothing reconstructed nothing: no image read, no structure
        read = last["reference_accuracy"] if last["images"] else 0.0
        rows = [
            {"name": "reference accuracy on reconstructions", "value": read,
             "chance": last["chance"] if last["images"] else 0.1},
            {"name": "SSIM", "value": last["ssim"] if last["images"] else 0.0, "chance": 0.0},
        ]  # fmt: skip
        guard = metrics.get("detector")
        if guard:
            rows.append({"name": "owners stopped by SplitGuard", "value": guard["stopped_share"],
                         "chance": 0.0})  # fmt: skip
        accuracy_ = u["accuracy"] if u["accuracy"] is not None else 0.0
        return {
            "utility": {"name": "task accuracy", "value": accuracy_, "chance": u["chance"]},
            "leakage": rows,
        }

    @classmethod
    def check(cls, scenario: Scenario, source: str) -> None:
        p, d = scenario.role.params, scenario.deployment
        if guarded(scenario) and d.labels != "owner":
            raise ScenarioError(
                source, "deployment.labels",
                "splitguard's owners change the labels they send: set deployment.labels: owner",
            )  # fmt: skip
        if p.adaptive and (p.server != "fsha" or not guarded(scenario)):
            raise ScenarioError(
                source, "role.adaptive",
                "the adaptive server is FSHA evading splitguard: needs role.server: fsha and a "
                "splitguard defence (set adaptive: false)",
            )  # fmt: skip
        if sum(spec.name == "splitguard" for spec in scenario.defences) > 1:
            raise ScenarioError(source, "defences", "at most one splitguard per owner")
        if p.decoder == "deep" and scenario.models.split.params.cut == "conv":
            raise ScenarioError(
                source, "role.decoder",
                "'deep' is papers/003's decoder for the linear cut; the conv cut has its own "
                "(set decoder: paper)",
            )  # fmt: skip
        if p.server == "honest" and p.schedule != "parallel":
            raise ScenarioError(
                source, "role.schedule",
                "the honest server inverts with the segment it averages (FedAvg): 'parallel' only",
            )  # fmt: skip
        if d.users > MNIST_TEST:
            raise ScenarioError(
                source, "deployment.users", f"at most {MNIST_TEST} (the MNIST test images)"
            )
        clients = d.clients
        check_faults(scenario, source, ("train", "infer"), "split training", clients,
                     f"must be below deployment.clients ({clients})")  # fmt: skip

    # -- 1. deploy: split training over Flower, the server answering its own way ----------

    def deploy(self) -> HijackReceived:
        t = self.scenario.training
        d = self.scenario.deployment
        labels = self._dataset().classifier_labels()
        parts = train_partitions(len(labels), d.clients, self.scenario.seed, labels, d.partitioner)
        steps_per_round = sum(math.ceil(len(part) / t.batch_size) for part in parts)
        outcome = SplitOutcome()
        with self.run.phase("split training", t.epochs * steps_per_round) as advance:

            def on_round(row: dict[str, float]) -> None:
                self.run.console.log(
                    f"round {int(row['round'])}/{t.epochs}: server-side train accuracy "
                    f"{100 * row['train_accuracy']:.2f} %"
                    + (
                        f"; stopped by SplitGuard: {sorted(outcome.stopped)}"
                        if outcome.stopped
                        else ""
                    )  # fmt: skip
                )

            server = server_app(self.scenario, self.wire, outcome, set(), advance, on_round)
            self.flower(server, outcome)
        if outcome.adversary is None or outcome.server is None:
            raise RuntimeError("the Flower ServerApp ended before training finished")
        held = outcome.adversary.held()
        kept = held["recorded"]
        pids = sorted(outcome.inference)
        width = sent_width(self.scenario.models.split.params)
        return HijackReceived(
            partitions=pids,
            inference_z=(
                np.concatenate([outcome.inference[p] for p in pids])
                if pids
                else np.zeros((0, width), np.float32)
            ),  # fmt: skip
            kept_z=kept["z"].reshape(-1, width).astype(np.float32),
            kept_ids=kept["ids"].astype(np.int64),
            kept_owner=kept["owner"].astype(np.int64),
            kept_batch=kept["step"].astype(np.int64),
            client_weights=outcome.client_weights or {},
            server_weights={k: v.detach().numpy() for k, v in outcome.server.state_dict().items()},
            pilot=held["pilot"],
            inverse=held["decoder"],
            history=outcome.history,
            losses=held["losses"],
            batches=held["batches"],
            honest_answers=held["honest_answers"],
            stopped={str(k): v for k, v in outcome.stopped.items()},
            detector=dict(outcome.observed),
            round_trips=outcome.round_trips,
        )

    # -- 2. attack: decode what it received ----------------------------------------------

    def attack(self, received: HijackReceived) -> HijackOutput:
        p, t = self.params, self.scenario.training
        split = self.scenario.models.split.params
        history: list[dict[str, float]] = []
        if p.server == "fsha":  # FSHA's inverse of the pilot's feature space (eq. 5)
            decoder = decoder_for(split, p.decoder == "deep")
            decoder.load_state_dict({k: torch.from_numpy(v) for k, v in received.inverse.items()})
        else:  # the passive server: a decoder through a segment (papers/003, section 3)
            data = self.scenario.dataset.params
            seed = self.seeds.int("hijack.passive")
            own = aux_images("same", data.root, p.aux_size, p.val_size, None, seed, data.download)
            segment, _ = split_parts(self.scenario)
            if p.passive_segment == "relayed":
                weights = {k: torch.from_numpy(v) for k, v in received.client_weights.items()}
                segment.load_state_dict(weights)
            else:
                segment = self._surrogate(own.x, own.y, seed)
            with self.run.phase("passive server's decoder", p.decoder_epochs) as advance:
                decoder, history = train_decoder(
                    segment, own.x, own.x_val, defend=None, epochs=p.decoder_epochs,
                    batch_size=t.batch_size, lr=p.lr_pilot, seed=seed,
                    device=resolve_device(self.scenario.engine),
                    decoder=lambda: decoder_for(split, p.decoder == "deep"), on_epoch=advance,
                )  # fmt: skip
        scored = received.inference_z[: p.reconstructions]
        return HijackOutput(
            kept=reconstruct(decoder, received.kept_z),
            inference=reconstruct(decoder, scored) if len(scored) else np.zeros((0, 1, 28, 28)),
            decoder_history=history,
        )

    def _surrogate(self, x: np.ndarray, y: np.ndarray, seed: int) -> torch.nn.Module:
        """A passive server without the owners' segment: it trains a segment of the same
        architecture (with its own f2) on its public labelled images for the task, and
        inverts through that instead."""
        torch.manual_seed(seed)
        segment, head = split_parts(self.scenario)
        net = torch.nn.Sequential(segment, head)
        optimiser = torch.optim.Adam(net.parameters(), lr=self.params.lr_pilot, foreach=True)
        generator = torch.Generator().manual_seed(seed)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        batch = self.scenario.training.batch_size
        with self.run.phase(
            "passive server's surrogate segment", self.params.decoder_epochs
        ) as advance:
            for _ in range(self.params.decoder_epochs):
                order = torch.randperm(len(xt), generator=generator)
                for start in range(0, len(order), batch):
                    idx = order[start : start + batch]
                    loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                advance()
        return segment.eval()

    # -- 3. truth: the owners' images, known to the harness alone -------------------------

    def truth(self, received: HijackReceived) -> HijackTruth:
        dataset = self._dataset()
        x_train, y_train = dataset.classifier_train()
        x_test, y_test = dataset.images(train=False)
        d = self.scenario.deployment
        test_ids = [test_partition(len(x_test), d.users, d.clients, pid, self.scenario.seed)
                    for pid in received.partitions]  # fmt: skip
        test_ids = np.concatenate(test_ids)[: self.params.reconstructions] if test_ids else []
        test_ids = np.asarray(test_ids, np.int64)
        return HijackTruth(
            x_kept=x_train[received.kept_ids],
            y_kept=y_train[received.kept_ids],
            x=x_test[test_ids],
            y=y_test[test_ids],
        )

    # -- 4. evaluate ---------------------------------------------------------------------

    def evaluate(
        self, received: HijackReceived, truth: HijackTruth, output: HijackOutput
    ) -> Evaluation:
        p = self.params
        with self.run.phase("evaluation", 1):
            ref_x, ref_y = self._dataset().reference_train()
            judge = reference_classifier(
                ref_x, ref_y, self.scenario.dataset.params.root, self.scenario.seed
            )

            def leakage(x: np.ndarray, recon: np.ndarray, y: np.ndarray) -> dict[str, Any]:
                if not len(x):  # nothing of this kind reached the server
                    return {"images": 0, "mse": None, "psnr": None, "ssim": None,
                            "reference_accuracy": None, "chance": None}  # fmt: skip
                return {**image_quality(x, recon), "images": len(x),
                        "reference_accuracy": accuracy(predict(judge, recon), y),
                        "chance": majority_rate(y)}  # fmt: skip

            batches = np.unique(received.kept_batch)
            per_batch = []
            for b in batches:
                mask = received.kept_batch == b
                row = leakage(truth.x_kept[mask], output.kept[mask], truth.y_kept[mask])
                owner = int(received.kept_owner[mask][0])
                per_batch.append({"batch": int(b), "owner": owner, **row})
            last = np.isin(received.kept_batch, batches[-LAST:])
            leak = {
                "last": leakage(truth.x_kept[last], output.kept[last], truth.y_kept[last])
                | {"batches": [int(b) for b in batches[-LAST:]]},
                "inference": leakage(truth.x, output.inference, truth.y),
                "per_batch": per_batch,
            }
        if len(truth.y):
            server_seg = split_parts(self.scenario)[1]
            server_seg.load_state_dict(
                {k: torch.from_numpy(v) for k, v in received.server_weights.items()}
            )
            server_seg.eval()
            with torch.no_grad():
                z = torch.from_numpy(received.inference_z[: len(truth.y)])
                answers = server_seg(z).argmax(1).numpy()
            task = accuracy(answers, truth.y)
        else:  # every owner stopped: none sent its test images
            task = None
        metrics: dict[str, Any] = {
            "utility": {
                "accuracy": task,
                "chance": majority_rate(truth.y) if len(truth.y) else 0.1,
                "test_images": len(truth.y),
                "history": received.history,
            },
            "leakage": leak,
            "attack": {
                "server": p.server,
                "adaptive": p.adaptive,
                "owner_batches": received.batches,
                "honest_answers": received.honest_answers,
                "kept_batches": len(batches),
                "losses": received.losses,
                "decoder_history": output.decoder_history,
            },
            "training": {
                "schedule": p.schedule,
                "labels": self.scenario.deployment.labels,
                "data_owners": self.scenario.deployment.clients,
                "round_trips": received.round_trips,
                "rounds_trained": len(received.history),
            },
            "wire": received.wire,
        }
        if guarded(self.scenario):
            metrics["detector"] = self._detector(received)
        pictures = np.arange(min(10, len(truth.y_kept)))
        last_idx = np.flatnonzero(last)[:10]
        plots = {
            "originals": truth.x_kept[last_idx],
            "reconstructed": output.kept[last_idx],
            "inference_originals": truth.x[:10],
            "inference": output.inference[:10],
            "early_originals": truth.x_kept[pictures],
            "early": output.kept[pictures],
        }
        return Evaluation(metrics, plots)

    def _detector(self, received: HijackReceived) -> dict[str, Any]:
        """SplitGuard's verdicts from the owners' logs: who stopped, at which batch, scores."""
        (guard,) = [d for d in build_defences(self.scenario.defences) if d.name == "splitguard"]
        owners = sorted({int(k.split(".")[0]) for k in received.detector})
        per_owner = {}
        for pid in owners:
            scores = received.detector[f"{pid}.scores"]
            at = received.detector[f"{pid}.at"].reshape(-1, 2)
            stop = received.stopped.get(str(pid))
            per_owner[str(pid)] = {
                "stopped": stop is not None,
                "stopped_at": stop,
                "stopped_batch": None if stop is None else stop["answered"],
                "scores": [round(float(s), 4) for s in scores],
                "fake_at": at.tolist(),
                "mean_score": float(scores.mean()) if len(scores) else None,
                "gradients_kept": received.detector[f"{pid}.count"].tolist(),
            }
        stopped = sum(row["stopped"] for row in per_owner.values())
        return {
            "params": guard.params.model_dump(),
            "owners": per_owner,
            "stopped": stopped,
            "stopped_share": stopped / max(1, len(per_owner)),
            "server": self.params.server + (" (adaptive)" if self.params.adaptive else ""),
        }

    def _dataset(self) -> MNIST:
        return DATASETS.get(self.scenario.dataset.name)(
            self.scenario.dataset.params, self.scenario.seed, None
        )


__all__ = ["HijackReceived", "HijackingServer"]
