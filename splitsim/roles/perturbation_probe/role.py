"""Threat model: a model owner probes data owners' secret inputs one label-change bit at a time.

Phases, in the order they run (papers/004, sections 2-3):

1. served model: the model owner trains (or loads, cached) the MNIST classifier it serves, on
   MNIST training images 0-40,000;
2. directions: per kind the scenario compares (random, the paper's; class-centroid and
   adversarial-gradient ones, its future work), from the adversary's own images and model;
3. the adversary's training signatures: the same bracketing-and-bisection search against its
   own copy of the model, on its own images (MNIST 40,000-50,000, disjoint from every target),
   cached on disk because they dominate the cost;
4. decoders: one DCGAN-style generator per direction kind, L2 loss on (E_x, x);
5. probing over Flower: the data owners hold MNIST test images; each session (a direction kind
   and the defences the owners run for it) searches every owner's signatures at once, one
   message per owner per step, bits only in the replies;
6. evaluation by the harness, which alone sees the inputs: MSE / PSNR / SSIM, the accuracy of an
   independent classifier (MNIST 50,000-60,000) on the reconstructions, queries per input, and
   the served model's accuracy under each session's defences.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from splitsim import defences as defence_lib
from splitsim import seeds
from splitsim.data.mnist import ATTACKER_TRAIN
from splitsim.decoding import reconstruct
from splitsim.engine.resources import resolve_device
from splitsim.engine.simulation import simulate
from splitsim.engine.wire import WireLog
from splitsim.engine.wire import client_records as wire_records
from splitsim.errors import ScenarioError
from splitsim.metrics import accuracy, image_quality, majority_rate
from splitsim.reference_classifier import predict, reference_classifier
from splitsim.registry import DATASETS, MODELS, ROLES
from splitsim.roles.model_inversion.protocol import test_partition
from splitsim.roles.perturbation_probe import report
from splitsim.roles.perturbation_probe.attack import directions, local_oracle, search, train_decoder
from splitsim.roles.perturbation_probe.protocol import ProbeOutcome, Session, client_app, server_app
from splitsim.runs import Run
from splitsim.scenario import Plugin, Scenario

MNIST_TEST = 10_000
AUX_MAX = 10_000  # MNIST 40,000-50,000


@ROLES.register("perturbation_probe")
class PerturbationProber:
    """Model owner that decodes secret inputs from label-change bits (minimal-eps signatures)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        directions: list[Literal["random", "centroid", "gradient"]] = Field(
            ["random", "centroid", "gradient"],
            min_length=1,
            description="direction kinds to compare; the first is the headline",
        )
        num_directions: int = Field(100, ge=2, description="the paper: 100")
        eps_start: float = Field(2.0, gt=0, description="first eps tried (then doubled)")
        eps_max: float = Field(64.0, gt=0, description="a direction that never flips gets this")
        tolerance: float = Field(0.05, gt=0, lt=1, description="bisection stops at hi-lo<=t*hi")
        max_steps: int = Field(40, ge=1, description="search steps (round trips) per session")
        aux_size: int = Field(4000, ge=20, description="the adversary's images (signatures)")
        decoder_epochs: int = Field(30, ge=1)
        served_epochs: int = Field(2, ge=1, description="epochs of the served classifier")
        compare_defences: bool = Field(
            True,
            description="also probe with no defence and with each defence alone (the table)",
        )

    stages = ("input", "answer", "budget")

    @staticmethod
    def flower_nodes(scenario: Scenario) -> int:
        """Flower nodes the role's phases need (SuperNodes under the deployment engine)."""
        return scenario.deployment.clients

    models = {"served": "probe_cnn"}
    report = report
    adaptive_override = None  # the adversary trains on its own undefended model

    @classmethod
    def check(cls, scenario: Scenario, source: str) -> None:
        p = scenario.role.params
        if scenario.dataset.name != "mnist":
            raise ScenarioError(
                source, "dataset.name", "role perturbation_probe runs on mnist; allowed: mnist"
            )
        if scenario.tasks is not None:
            raise ScenarioError(source, "tasks", "not used by role perturbation_probe; remove it")
        if len(set(p.directions)) != len(p.directions):
            raise ScenarioError(source, "role.directions", "each kind at most once")
        if p.aux_size > AUX_MAX:
            raise ScenarioError(source, "role.aux_size", f"at most {AUX_MAX} (MNIST 40,000-50,000)")
        if p.eps_start > p.eps_max:
            raise ScenarioError(source, "role.eps_start", f"must not exceed eps_max ({p.eps_max})")
        if scenario.deployment.users > MNIST_TEST:
            raise ScenarioError(
                source, "deployment.users", f"at most {MNIST_TEST} (the MNIST test images)"
            )

    @staticmethod
    def summary(metrics: dict) -> dict:
        """The comparison matrix's numbers, from the headline session (first direction kind,
        the scenario's defences): the served model's accuracy on the owners' inputs under
        those defences; leakage as the reference classifier's accuracy on reconstructions
        (headline), and their SSIM."""
        head = metrics["sessions"][0]
        return {
            "utility": {
                "name": "served accuracy",
                "value": head["served_accuracy"],
                "chance": metrics["chance"],
            },
            "leakage": [
                {
                    "name": "reference accuracy on reconstructions",
                    "value": head["reference_accuracy"],
                    "chance": metrics["chance"],
                },
                {"name": "SSIM", "value": head["ssim"], "chance": 0.0},
            ],
        }

    @staticmethod
    def run(scenario: Scenario, run: Run) -> dict:
        torch.use_deterministic_algorithms(True, warn_only=True)
        p = scenario.role.params
        root = scenario.dataset.params.root
        dataset = DATASETS.get("mnist")(scenario.dataset.params, scenario.seed, None)
        x_train, y_train = dataset.images(train=True)
        x_test, y_test = dataset.images(train=False)
        served_spec = scenario.models.served

        def build() -> torch.nn.Module:
            return MODELS.get(served_spec.name).build(served_spec.params, (1, 28, 28), 10)

        # 1. the served model
        with run.phase("served model", p.served_epochs) as advance:
            model = served_model(
                build, *dataset.classifier_train(), root, scenario.seed, p.served_epochs, advance
            )
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        aux_x = x_train[ATTACKER_TRAIN[0] : ATTACKER_TRAIN[0] + p.aux_size]
        aux_y = y_train[ATTACKER_TRAIN[0] : ATTACKER_TRAIN[0] + p.aux_size]
        search_args = {
            "eps_start": p.eps_start,
            "eps_max": p.eps_max,
            "tolerance": p.tolerance,
            "max_steps": p.max_steps,
        }

        # 2-4. directions, the adversary's own signatures, a decoder per kind
        dirs, decoders, stats, history = {}, {}, {}, {}
        with run.phase("adversary's signatures", len(p.directions) * p.max_steps) as advance:
            for kind in p.directions:
                seed = seeds.int_seed(scenario.seed, "probe.directions")
                dirs[kind] = directions(
                    kind, p.num_directions, (1, 28, 28), seed, model, aux_x, aux_y
                )
                sig = cached_signatures(model, aux_x, dirs[kind], search_args, root, advance)
                stats[kind] = sig.stats()
                history[kind] = {"signatures": sig}
        with run.phase("decoders", len(p.directions) * p.decoder_epochs) as advance:
            for kind in p.directions:
                features = history[kind]["signatures"].features(stats[kind])
                n_val = max(2, len(aux_x) // 10)
                decoders[kind], history[kind]["decoder"] = train_decoder(
                    features[n_val:],
                    aux_x[n_val:],
                    features[:n_val],
                    aux_x[:n_val],
                    epochs=p.decoder_epochs,
                    batch_size=64,
                    lr=1e-3,
                    seed=seeds.int_seed(scenario.seed, "probe.decoder"),
                    device=resolve_device(scenario.engine),
                    on_epoch=advance,
                )

        # 5. probing the data owners over Flower
        settings = defence_settings(scenario.defences, p.compare_defences)
        # Every kind with the configured defences and without; each defence alone only for
        # the headline kind (the table stays readable and the run short).
        sessions = [
            Session(kind, dirs[kind], setting, label)
            for i, kind in enumerate(p.directions)
            for j, (label, setting) in enumerate(settings)
            if i == 0 or j < 2
        ]
        clients, users = scenario.deployment.clients, scenario.deployment.users

        def secret_inputs(pid: int) -> np.ndarray:
            return x_test[test_partition(MNIST_TEST, users, clients, pid, scenario.seed)]

        wire = WireLog(run.folder / "wire.jsonl")
        outcome = ProbeOutcome()
        started = time.perf_counter()
        with run.phase("probing over Flower", len(sessions) * p.max_steps, timed=False) as tick:
            server = server_app(
                sessions,
                state,
                clients,
                search_args,
                wire,
                outcome,
                lambda k, step, left: tick(),
            )
            try:
                simulate(
                    server,
                    client_app(sessions, build, secret_inputs, scenario.seed),
                    clients,
                    scenario.engine,
                )
            finally:
                wire.close()
        run.timings["flower simulation"] = round(time.perf_counter() - started, 3)
        if outcome.error is not None:
            raise RuntimeError(f"the Flower ServerApp failed: {outcome.error}") from outcome.error
        if len(outcome.signatures) != len(sessions):
            raise RuntimeError("the Flower ServerApp ended before probing finished")

        # 6. evaluation against the inputs only the harness knows
        ids = np.concatenate(
            [
                test_partition(MNIST_TEST, users, clients, pid, scenario.seed)
                for pid in outcome.partitions
            ]
        )
        truth_x, truth_y = x_test[ids], y_test[ids]
        with run.phase("evaluation", len(sessions)) as advance:
            judge = reference_classifier(*dataset.reference_train(), root, scenario.seed)
            rows, pictures = [], {}
            for k, session in enumerate(sessions):
                sig = outcome.signatures[k]
                recon = reconstruct(decoders[session.kind], sig.features(stats[session.kind]))
                rows.append(
                    {
                        "directions": session.kind,
                        "defences": session.label,
                        **image_quality(truth_x, recon),
                        "reference_accuracy": accuracy(predict(judge, recon), truth_y),
                        "queries_per_input": float(sig.queries.mean()),
                        "queries_max": int(sig.queries.max()),
                        "round_trips": sig.steps,
                        "flipped": float(sig.flipped.mean()),
                        "refused": float(sig.refused.mean()),
                        "served_accuracy": served_accuracy(
                            model, truth_x, truth_y, session.defences, scenario.seed
                        ),
                    }
                )
                pictures[k] = recon
                advance()
        client_records = wire_records(run.folder / "wire.jsonl")
        one_per_class = np.array([int(np.argmax(truth_y == c)) for c in np.unique(truth_y)])
        common = int(np.bincount(truth_y).argmax())
        # Style is judged without defences where the table has such sessions.
        undefended = "none" if any(s.label == "none" for s in sessions) else sessions[0].label
        styles = np.flatnonzero(truth_y == common)[:8]
        return {
            "metrics": {
                "sessions": rows,
                "chance": majority_rate(truth_y),
                "targets": len(ids),
                "served_model_test_accuracy": accuracy(predict(model, x_test), y_test),
                "adversary": {
                    "aux_images": len(aux_x),
                    "directions": p.num_directions,
                    "training_signature_queries_per_input": {
                        kind: float(history[kind]["signatures"].queries.mean())
                        for kind in p.directions
                    },
                    "decoder_history": {kind: history[kind]["decoder"] for kind in p.directions},
                },
                "wire": {
                    "messages": wire.messages,
                    "bytes_to_clients": wire.bytes["to_clients"],
                    "bytes_from_clients": wire.bytes["from_clients"],
                    "client_records": client_records,
                },
            },
            "plots": {
                "originals": truth_x[one_per_class],
                "sessions": [
                    (f"{s.kind} / {s.label}", pictures[k][one_per_class])
                    for k, s in enumerate(sessions)
                ],
                "style_class": common,
                "style_originals": truth_x[styles],
                "style_sessions": [
                    (f"{s.kind} ({s.label})", pictures[k][styles])
                    for k, s in enumerate(sessions)
                    if s.label == undefended
                ],
            },
        }


def defence_settings(configured: list[Plugin], compare: bool) -> list[tuple[str, list]]:
    """The owners' defences per session: as configured first (the headline), then, to compare,
    none and each defence alone."""

    def label(specs: list[Plugin]) -> str:
        return (
            " + ".join(
                f"{s.name}({', '.join(f'{k}={v}' for k, v in s.params.model_dump().items())})"
                for s in specs
            )
            or "none"
        )

    settings = [(label(configured), list(configured))]
    if compare and configured:
        settings.append(("none", []))
        if len(configured) > 1:
            settings += [(label([s]), [s]) for s in configured]
    return settings


def served_model(build, x, y, root: str, seed: int, epochs: int, advance) -> torch.nn.Module:
    """Train the served classifier (Adam 1e-3, batch 64) or load it from the cache."""
    model = build()
    shape = "-".join(f"{k}{tuple(v.shape)}" for k, v in model.state_dict().items())
    key = hashlib.sha256(f"{shape}|{len(x)}|{seed}|{epochs}".encode()).hexdigest()[:12]
    path = Path(root) / "splitsim-cache" / f"probe_served_{key}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        advance(n=epochs)
        return model.eval()
    torch.manual_seed(seeds.int_seed(seed, "probe.served_model"))
    generator = torch.Generator().manual_seed(seeds.int_seed(seed, "probe.served_model"))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        for s in range(0, len(order), 64):
            idx = order[s : s + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        advance()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model.eval()


def cached_signatures(model, x, dirs, search_args: dict, root: str, advance):
    """The adversary's signatures of its own images, computed once per model, directions,
    images and search settings (they dominate the cost), then read from the cache."""
    from splitsim.roles.perturbation_probe.attack import Signatures

    digest = hashlib.sha256()
    for v in model.state_dict().values():
        digest.update(v.numpy().tobytes())
    digest.update(dirs.tobytes())
    digest.update(x.tobytes())
    digest.update(repr(sorted(search_args.items())).encode())
    path = Path(root) / "splitsim-cache" / f"probe_signatures_{digest.hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path) as f:
            advance(n=search_args["max_steps"])
            return Signatures(f["eps"], f["flipped"], f["refused"], f["queries"], int(f["steps"]))
    steps = [0]

    def on_step(step: int, left: int) -> None:
        steps[0] = step
        advance()

    sig = search(local_oracle(model, x, dirs), len(x), len(dirs), on_step=on_step, **search_args)
    advance(n=search_args["max_steps"] - steps[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, eps=sig.eps, flipped=sig.flipped, refused=sig.refused, queries=sig.queries,
             steps=sig.steps)  # fmt: skip
    tmp.replace(path)
    return sig


def served_accuracy(model, x, y, defences: list, seed: int) -> float:
    """The served model's accuracy on the owners' own inputs under their input-stage defences
    (the only ones that change what an honest evaluation returns)."""
    chosen = [d for d in defence_lib.build(defences) if d.stage == "input"]
    rng = seeds.rng(seed, "probe.served_input_noise")
    return accuracy(predict(model, defence_lib.apply_stage(chosen, "input", x, rng)), y)
