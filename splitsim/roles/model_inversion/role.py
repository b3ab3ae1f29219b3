"""Threat model: split learning with an honest-but-curious server that inverts what it receives.

Phases, in the order they run (papers/003, sections 3-4 and Appendices A, B, D):

1. split training over Flower: data owners hold f1 and send (defended) intermediate tensors,
   the server holds f2 and the labels and returns gradients (engine/split_training.py);
2. inference: data owners send the intermediate tensors of their test images;
3. the attack: the server gets f1 (a colluding data owner hands it over with its images, or the
   server uses the copy it relayed/averaged itself: "obtained alone", Appendix A), builds its
   auxiliary set (the paper's MNIST 40k-45k, a class-disjoint part of it, Fashion-MNIST or
   EMNIST as a foreign prior), trains a decoder (attacks/model_inversion.py) and reconstructs
   the inputs behind the tensors it received at inference and in the last training epoch;
4. evaluation by the harness, which alone knows the inputs: task accuracy, distance correlation
   (dcor), MSE / PSNR / SSIM and the accuracy of an independent classifier on reconstructions.
"""

from __future__ import annotations

import shutil
import time
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat

from splitsim import seeds
from splitsim.data.mnist import MNIST, aux_images, emnist_available
from splitsim.decoding import reconstruct
from splitsim.defences import apply_stage
from splitsim.defences import build as build_defences
from splitsim.engine.node_state import state_root
from splitsim.engine.resources import resolve_device
from splitsim.engine.simulation import simulate
from splitsim.engine.wire import WireLog
from splitsim.engine.wire import client_records as wire_records
from splitsim.errors import ScenarioError
from splitsim.metrics import (
    accuracy,
    distance_correlation_batches,
    image_quality,
    majority_rate,
)
from splitsim.reference_classifier import predict, reference_classifier
from splitsim.registry import DATASETS, DEFENCES, ROLES
from splitsim.roles.model_inversion import report
from splitsim.roles.model_inversion.attack import intermediates, train_decoder
from splitsim.roles.model_inversion.protocol import (
    SplitOutcome,
    client_app,
    server_app,
    split_parts,
    test_partition,
    train_partition,
)
from splitsim.runs import Run
from splitsim.scenario import Scenario

MNIST_TEST = 10_000


@ROLES.register("model_inversion")
class ModelInversionServer:
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
        access: Literal["colluding", "stolen"] = Field(
            "colluding", description="Appendix A: a colluding owner, or the server alone"
        )
        colluder: int = Field(0, ge=0, description="partition of the colluding data owner")
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

    @staticmethod
    def flower_nodes(scenario: Scenario) -> int:
        """Flower nodes the role's phases need (SuperNodes under the deployment engine)."""
        return scenario.deployment.clients

    models = {"split": "split_cnn"}
    report = report
    adaptive_override = "role.adaptive=true"

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
        if scenario.dataset.name != "mnist":
            raise ScenarioError(
                source, "dataset.name", "role model_inversion runs on mnist; allowed: mnist"
            )
        if scenario.tasks is not None:
            raise ScenarioError(source, "tasks", "not used by role model_inversion; remove it")
        if p.access == "colluding" and p.aux_data != "same":
            raise ScenarioError(
                source,
                "role.aux_data",
                f"a colluding data owner hands over its own MNIST images, so aux_data must be "
                f"'same' (got {p.aux_data!r}); use access: stolen for another prior",
            )
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
        if scenario.deployment.users > MNIST_TEST:
            raise ScenarioError(
                source, "deployment.users", f"at most {MNIST_TEST} (the MNIST test images)"
            )

    @staticmethod
    def run(scenario: Scenario, run: Run) -> dict:
        torch.use_deterministic_algorithms(True, warn_only=True)
        p = scenario.role.params
        t = scenario.training
        clients = scenario.deployment.clients
        dataset: MNIST = DATASETS.get(scenario.dataset.name)(
            scenario.dataset.params, scenario.seed, None
        )
        x_train, y_train = dataset.classifier_train()
        x_test, y_test = dataset.images(train=False)
        rng = seeds.rng(scenario.seed, "inversion.training_targets")
        keep = rng.choice(len(x_train), size=min(p.training_targets, len(x_train)), replace=False)
        steps_per_round = sum(
            -(-len(train_partition(len(x_train), clients, pid, scenario.seed)) // t.batch_size)
            for pid in range(clients)
        )

        # 1-2. split training and inference over Flower
        wire = WireLog(run.folder / "wire.jsonl")
        outcome = SplitOutcome()
        state_dir = state_root()
        started = time.perf_counter()
        try:
            with run.phase("split training", t.epochs * steps_per_round) as advance:

                def on_round(row: dict[str, float]) -> None:
                    run.console.log(
                        f"round {int(row['round'])}/{t.epochs}: server-side train accuracy "
                        f"{100 * row['train_accuracy']:.2f} %, loss {row['train_loss']:.4f}"
                    )

                server = server_app(scenario, wire, outcome, set(keep.tolist()), advance, on_round)
                simulate(server, client_app(scenario, str(state_dir)), clients, scenario.engine)
        finally:
            wire.close()
            shutil.rmtree(state_dir, ignore_errors=True)  # the owners' devices go away
        run.timings["flower simulation"] = round(time.perf_counter() - started, 3)
        if outcome.error is not None:
            raise RuntimeError(f"the Flower ServerApp failed: {outcome.error}") from outcome.error
        if outcome.client_weights is None or outcome.server is None:
            raise RuntimeError("the Flower ServerApp ended before training finished")

        pids = sorted(outcome.inference)
        test_ids = np.concatenate(
            [
                test_partition(len(x_test), scenario.deployment.users, clients, pid, scenario.seed)
                for pid in pids
            ]
        )
        z_infer = np.concatenate([outcome.inference[pid] for pid in pids])
        z_train = (
            np.concatenate(outcome.training_z) if outcome.training_z else np.zeros((0, 1), "f4")
        )
        train_ids = (
            np.concatenate(outcome.training_ids) if outcome.training_ids else np.zeros(0, np.int64)
        )
        np.savez_compressed(
            run.folder / "received.npz",
            inference_z=z_infer,
            training_z=z_train,
            training_ids=train_ids,
        )

        # Utility: the server's predictions on what it received, and the clean model.
        client_seg, server_seg = split_parts(scenario)
        client_seg.load_state_dict(
            {k: torch.from_numpy(v) for k, v in outcome.client_weights.items()}
        )
        server_seg.load_state_dict(outcome.server.state_dict())
        client_seg.eval()
        server_seg.eval()
        with torch.no_grad():
            deployed_pred = server_seg(torch.from_numpy(z_infer)).argmax(1).numpy()
        clean_z = intermediates(client_seg, x_test[test_ids])
        with torch.no_grad():
            clean_pred = server_seg(torch.from_numpy(clean_z)).argmax(1).numpy()
        n_dcor = min(p.dcor_samples, len(x_test))
        dcor_x = x_test[:n_dcor]
        dcor_stats = distance_correlation_batches(
            dcor_x, intermediates(client_seg, dcor_x), t.batch_size
        )

        # 3. the attack
        if p.access == "colluding":
            segment_weights = {
                k.removeprefix("segment."): v for k, v in outcome.colluder.items() if "." in k
            }
            aux, val = outcome.colluder["x"], outcome.colluder["x_val"]
        else:
            segment_weights = outcome.client_weights
            own = aux_images(
                p.aux_data,
                scenario.dataset.params.root,
                p.aux_size,
                p.val_size,
                p.aux_classes,
                seeds.int_seed(scenario.seed, "inversion.attack"),
                scenario.dataset.params.download,
            )
            aux, val = own.x, own.x_val
        stolen, _ = split_parts(scenario)
        stolen.load_state_dict({k: torch.from_numpy(v) for k, v in segment_weights.items()})
        known = [d for d in build_defences(scenario.defences) if d.stage == "payload"]
        defend = None
        if p.adaptive and known:
            defence_rng = seeds.rng(scenario.seed, "inversion.attack", 1)

            def defend(z: np.ndarray) -> np.ndarray:
                return apply_stage(known, "payload", z, defence_rng)

        with run.phase("attacker's decoder", p.decoder_epochs) as advance:
            decoder, history = train_decoder(
                stolen,
                aux,
                val,
                defend=defend,
                epochs=p.decoder_epochs,
                batch_size=t.batch_size,
                lr=t.lr,
                seed=seeds.int_seed(scenario.seed, "inversion.attack"),
                device=resolve_device(scenario.engine),
                deep=p.decoder == "deep",
                on_epoch=advance,
            )
        recon_infer = reconstruct(decoder, z_infer)
        recon_train = reconstruct(decoder, z_train) if len(z_train) else None

        # 4. evaluation against the inputs only the harness knows
        with run.phase("evaluation", 1):
            ref_x, ref_y = dataset.reference_train()
            judge = reference_classifier(ref_x, ref_y, scenario.dataset.params.root, scenario.seed)
            truth = y_test[test_ids]
            leakage = {
                "inference": _leakage(judge, x_test[test_ids], recon_infer, truth),
            }
            if recon_train is not None:
                leakage["training"] = _leakage(
                    judge, x_train[train_ids], recon_train, y_train[train_ids]
                )
            sweep, sweep_pictures = [], []
            pictures = _one_per_class(truth)
            for i, b in enumerate(p.noise_sweep):
                noise_rng = seeds.rng(scenario.seed, "inversion.noise_sweep", i)
                noisy = clean_z + noise_rng.laplace(0.0, b, clean_z.shape).astype(np.float32)
                with torch.no_grad():
                    pred = server_seg(torch.from_numpy(noisy)).argmax(1).numpy()
                recon = reconstruct(decoder, noisy)
                sweep.append(
                    {"scale": b, "accuracy": accuracy(pred, truth)}
                    | _leakage(judge, x_test[test_ids], recon, truth)
                )
                sweep_pictures.append(recon[pictures])
        client_records = wire_records(run.folder / "wire.jsonl")
        train_pictures = _one_per_class(y_train[train_ids]) if recon_train is not None else None
        return {
            "metrics": {
                "utility": {
                    "accuracy": accuracy(deployed_pred, truth),
                    "accuracy_without_inference_noise": accuracy(clean_pred, truth),
                    "chance": majority_rate(truth),
                    "test_images": len(truth),
                    "history": outcome.history,
                },
                "distance_correlation": dcor_stats,
                "attack": {
                    "access": p.access,
                    "aux_data": p.aux_data,
                    "aux_size": len(aux),
                    "adaptive": p.adaptive,
                    "decoder": p.decoder,
                    "defences_known": [
                        spec.name
                        for spec in scenario.defences
                        if defend is not None and DEFENCES.get(spec.name).stage == "payload"
                    ],
                    "decoder_history": history,
                },
                "leakage": leakage,
                "noise_sweep": sweep,
                "training": {
                    "schedule": p.schedule,
                    "task_loss": p.task_loss,
                    "data_owners": clients,
                    "train_samples": {str(k): v for k, v in outcome.train_samples.items()},
                    "round_trips": outcome.round_trips,
                },
                "wire": {
                    "messages": wire.messages,
                    "bytes_to_clients": wire.bytes["to_clients"],
                    "bytes_from_clients": wire.bytes["from_clients"],
                    "client_records": client_records,
                },
            },
            "plots": {
                "originals": x_test[test_ids][pictures],
                "inference": recon_infer[pictures],
                "training_originals": (
                    x_train[train_ids][train_pictures] if train_pictures is not None else None
                ),
                "training": recon_train[train_pictures] if train_pictures is not None else None,
                "labels": truth[pictures],
                "sweep": {
                    f"{b:g}": images
                    for b, images in zip(p.noise_sweep, sweep_pictures, strict=True)
                },
            },
        }


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
