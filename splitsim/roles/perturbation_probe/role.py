"""Threat model: a model owner probes data owners' secret inputs one label-change bit at a time.

Phases, in the order they run (papers/004, sections 2-3):

1. deploy: the model owner trains (or loads, cached) the MNIST classifier it serves, on MNIST
   training images 0-40,000, and draws its directions per kind the scenario compares (random,
   the paper's; class-centroid and adversarial-gradient ones, its future work) from its own
   images and model. Then probing over Flower: the data owners hold MNIST test images; each
   session (a direction kind and the defences the owners run for it) searches every owner's
   signatures at once, one message per owner per step, bits only in the replies;
2. attack: the adversary's training signatures, by the same bracketing-and-bisection search
   against its own copy of the model on its own images (MNIST 40,000-50,000, disjoint from
   every target; cached on disk, they dominate the cost), one DCGAN-style decoder per kind
   (L2 loss on (E_x, x)), and the reconstructions from the signatures it received;
3. truth: the owners' images, which only the harness sees;
4. evaluate: MSE / PSNR / SSIM, the accuracy of an independent classifier (MNIST
   50,000-60,000) on the reconstructions, queries per input, and the served model's accuracy
   under each session's defences.

``adaptive: true`` (not in the paper, which leaves defences to future work): the prober knows
each session's defences. It asks every query ``votes`` times and takes the majority against
randomised response, fits its directions to a query budget (``attack.plan``), and trains each
session's decoder on its own images' signatures measured under a simulation of that
session's defences (``attack.local_oracle``). docs/perturbation_probe.md has the rule.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from splitsim import defences as defence_lib
from splitsim import seeds
from splitsim.cache_lock import compute_once
from splitsim.data.mnist import ATTACKER_TRAIN, MNIST
from splitsim.data.partitions import test_partition
from splitsim.decoding import reconstruct
from splitsim.engine.resources import resolve_device
from splitsim.errors import ScenarioError
from splitsim.metrics import accuracy, image_quality, majority_rate
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
from splitsim.roles.perturbation_probe import report
from splitsim.roles.perturbation_probe.attack import (
    Plan,
    Signatures,
    directions,
    local_oracle,
    plan,
    search,
    train_decoder,
)
from splitsim.roles.perturbation_probe.protocol import (
    ProbeOutcome,
    client_app,
    served_network,
    server_app,
    sessions,
)
from splitsim.runs import write_atomic
from splitsim.scenario import Scenario
from splitsim.threads import one_thread


@dataclass(kw_only=True)
class ProbeReceived(Received):
    """What the adversary holds: its served model and directions, and per session the
    signatures it measured from the owners' bits."""

    partitions: list[int]  # owners in the order their inputs are numbered
    sizes: list[int]
    served: dict[str, np.ndarray]  # the served model's weights (its own)
    directions: dict[str, np.ndarray]  # kind -> (d, 1, 28, 28)
    eps: list[np.ndarray]  # per session, as Signatures
    flipped: list[np.ndarray]
    refused: list[np.ndarray]
    queries: list[np.ndarray]
    steps: list[int]
    failures: list[dict[str, Any]] = field(default_factory=list)  # every failed try
    # per session, the adversary's own choice: {"votes": k, "directions": d} (None: a run
    # recorded before the adaptive prober, which probed every direction once)
    plans: list[dict[str, int]] | None = None
    # adaptive under a budget: per kind, what a direction cost on the adversary's own images
    pilot_queries_per_direction: dict[str, float] | None = None

    def plan(self, k: int) -> Plan:
        if self.plans is None:
            return Plan(1, self.eps[k].shape[1])
        return Plan(**self.plans[k])

    def signatures(self, k: int) -> Signatures:
        return Signatures(
            self.eps[k], self.flipped[k], self.refused[k], self.queries[k], self.steps[k]
        )


@dataclass(kw_only=True)
class ProbeOutput(AttackOutput):
    reconstructions: list[np.ndarray]  # per session
    training_queries: dict[str, float]  # per signature set: queries per own image
    decoder_history: dict[str, list[dict[str, float]]]
    aux_images: int


@dataclass(kw_only=True)
class ProbeTruth(Truth):
    x: np.ndarray  # the owners' secret images, in the adversary's numbering
    y: np.ndarray
    x_test: np.ndarray  # the whole MNIST test set (the served model's own test accuracy)
    y_test: np.ndarray


MNIST_TEST = 10_000
AUX_MAX = 10_000  # MNIST 40,000-50,000
PILOT = 200  # the adaptive prober's own images it measures a direction's cost on


@register("perturbation_probe")
class PerturbationProber(Role):
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
        adaptive: bool = Field(
            False,
            description="the prober knows the owners' defences: it votes over repeated "
            "queries against randomised response, fits its directions to a query budget and "
            "trains each decoder on signatures measured under the session's defences",
        )
        votes: int | None = Field(
            None,
            ge=1,
            description="adaptive: copies of each query (odd); unset: chosen from the defences",
        )

    stages = ("input", "answer", "budget")
    models = {"served": "probe_cnn"}
    report = report
    datasets = ("mnist",)
    fault_tolerant = True  # engine.faults / on_client_failure: retry; the search needs everyone
    received_type = ProbeReceived
    adaptive_override = "role.adaptive=true"
    attack_params = frozenset({"aux_size", "decoder_epochs"})

    @classmethod
    def client_app(cls, scenario: Scenario, storage: str):  # noqa: ANN206
        return client_app(scenario, storage)

    @classmethod
    def check(cls, scenario: Scenario, source: str) -> None:
        p = scenario.role.params
        clients = scenario.deployment.clients
        check_faults(scenario, source, ("probe",), "probing", clients,
                     f"must be below deployment.clients ({clients})")  # fmt: skip
        if len(set(p.directions)) != len(p.directions):
            raise ScenarioError(source, "role.directions", "each kind at most once")
        if p.aux_size > AUX_MAX:
            raise ScenarioError(source, "role.aux_size", f"at most {AUX_MAX} (MNIST 40,000-50,000)")
        if p.votes is not None and not p.adaptive:
            raise ScenarioError(source, "role.votes", "only the adaptive prober votes; set "
                                "role.adaptive: true or remove role.votes")  # fmt: skip
        if p.votes is not None and p.votes % 2 == 0:
            raise ScenarioError(source, "role.votes", f"must be odd (a majority), got {p.votes}")
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

    # -- 1. deploy: the served model, the directions, probing over Flower --------------

    def deploy(self) -> ProbeReceived:
        p, scenario = self.params, self.scenario
        dataset = self._dataset()
        with self.run.phase("served model", p.served_epochs) as advance:
            model = served_model(
                lambda: served_network(scenario), *dataset.classifier_train(),
                scenario.dataset.params.root, scenario.seed, p.served_epochs, advance,
            )  # fmt: skip
        aux_x, aux_y = self._own_images()
        dirs = {
            kind: directions(kind, p.num_directions, (1, 28, 28),
                             self.seeds.int("probe.directions"), model, aux_x, aux_y)
            for kind in p.directions
        }  # fmt: skip
        passes = sessions(scenario)
        plans, pilot = self._plans(passes, model, aux_x, dirs)
        outcome = ProbeOutcome()
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        with self.run.phase("probing over Flower", len(passes) * p.max_steps, timed=False) as tick:
            server = server_app(passes, plans, dirs, state, scenario.deployment.clients,
                                self._search_args(), self.wire, outcome,
                                lambda k, step, left: tick(), scenario.engine)  # fmt: skip
            self.flower(server, outcome)
        if len(outcome.signatures) != len(passes):
            raise RuntimeError("the Flower ServerApp ended before probing finished")
        sig = [outcome.signatures[k] for k in range(len(passes))]
        return ProbeReceived(
            partitions=outcome.partitions,
            sizes=outcome.sizes,
            served=state,
            directions=dirs,
            eps=[s.eps for s in sig],
            flipped=[s.flipped for s in sig],
            refused=[s.refused for s in sig],
            queries=[s.queries for s in sig],
            steps=[s.steps for s in sig],
            failures=outcome.failures,
            plans=[chosen.to_json() for chosen in plans],
            pilot_queries_per_direction=pilot,
        )

    def _plans(
        self, passes: list, model: torch.nn.Module, aux_x: np.ndarray, dirs: dict[str, np.ndarray]
    ) -> tuple[list[Plan], dict[str, float] | None]:
        """Per session, how the adversary probes (attack.plan). Under a query budget it first
        measures what a direction costs: an undefended search of its first PILOT own images,
        the 90th percentile of queries per image over the directions."""
        p = self.params
        plain = Plan(1, p.num_directions)
        if not p.adaptive:
            return [plain] * len(passes), None
        pilot: dict[str, float] = {}
        built = [defence_lib.build(s.defences) for s in passes]
        budgeted = {s.kind for s, b in zip(passes, built, strict=True) if b and
                    any(d.stage == "budget" for d in b)}  # fmt: skip
        for kind in p.directions:
            if kind in budgeted:
                few = aux_x[:PILOT]
                sig = search(local_oracle(model, few, dirs[kind]), len(few), p.num_directions,
                             **self._search_args())  # fmt: skip
                pilot[kind] = float(np.percentile(sig.queries, 90) / p.num_directions)
        return [
            plan(b, p.num_directions, pilot.get(s.kind, 0.0), p.votes) if s.defences else plain
            for s, b in zip(passes, built, strict=True)
        ], pilot or None

    # -- 2. attack: the adversary's own signatures, a decoder per kind ------------------

    def attack(self, received: ProbeReceived) -> ProbeOutput:
        p = self.params
        model = self._served(received)
        aux_x, _ = self._own_images()
        root = self.scenario.dataset.params.root
        passes = sessions(self.scenario)
        # One training set per (kind, defences the adversary simulates, plan): the plain
        # prober's is the undefended search, shared by every session of a kind; the adaptive
        # one measures its own images under each session's defences, probed as it probes.
        keys: list[tuple[str, str, Plan]] = []
        for k, session in enumerate(passes):
            chosen = received.plan(k)
            simulated = received.plans is not None and p.adaptive and bool(session.defences)
            keys.append((session.kind, session.label if simulated else "none", chosen))
        specs = {session.label: session.defences for session in passes}
        distinct = list(dict.fromkeys(keys))
        own, stats, history = {}, {}, {}
        with self.run.phase("adversary's signatures", len(distinct) * p.max_steps) as advance:
            for j, key in enumerate(distinct):
                kind, label, chosen = key
                own[key] = cached_signatures(
                    model, aux_x, received.directions[kind][: chosen.directions],
                    self._search_args(), root, advance, votes=chosen.votes,
                    defences=specs[label] if label != "none" else [],
                    seed=self.seeds.int("probe.adaptive_defences", j),
                )  # fmt: skip
                stats[key] = own[key].stats()
        decoders = {}
        with self.run.phase("decoders", len(distinct) * p.decoder_epochs) as advance:
            for key in distinct:
                features = own[key].features(stats[key])
                n_val = max(2, len(aux_x) // 10)
                decoders[key], history[_name(key)] = train_decoder(
                    features[n_val:],
                    aux_x[n_val:],
                    features[:n_val],
                    aux_x[:n_val],
                    epochs=p.decoder_epochs,
                    batch_size=64,
                    lr=1e-3,
                    seed=self.seeds.int("probe.decoder"),
                    device=resolve_device(self.scenario.engine),
                    on_epoch=advance,
                )
        return ProbeOutput(
            reconstructions=[
                reconstruct(decoders[key], received.signatures(k).features(stats[key]))
                for k, key in enumerate(keys)
            ],
            training_queries={_name(key): float(own[key].queries.mean()) for key in distinct},
            decoder_history=history,
            aux_images=len(aux_x),
        )

    # -- 3. truth: the owners' images, known to the harness alone ----------------------

    def truth(self, received: ProbeReceived) -> ProbeTruth:
        x_test, y_test = self._dataset().images(train=False)
        users, clients = self.scenario.deployment.users, self.scenario.deployment.clients
        ids = np.concatenate(
            [test_partition(MNIST_TEST, users, clients, pid, self.scenario.seed)
             for pid in received.partitions]
        )  # fmt: skip
        return ProbeTruth(x=x_test[ids], y=y_test[ids], x_test=x_test, y_test=y_test)

    # -- 4. evaluate -------------------------------------------------------------------

    def evaluate(
        self, received: ProbeReceived, truth: ProbeTruth, output: ProbeOutput
    ) -> Evaluation:
        p, scenario = self.params, self.scenario
        model = self._served(received)
        passes = sessions(scenario)
        with self.run.phase("evaluation", len(passes)) as advance:
            judge = reference_classifier(*self._dataset().reference_train(),
                                         scenario.dataset.params.root, scenario.seed)  # fmt: skip
            rows = []
            for k, session in enumerate(passes):
                sig, recon = received.signatures(k), output.reconstructions[k]
                rows.append(
                    {
                        "directions": session.kind,
                        "defences": session.label,
                        **image_quality(truth.x, recon),
                        "reference_accuracy": accuracy(predict(judge, recon), truth.y),
                        "votes": received.plan(k).votes,
                        "directions_used": received.plan(k).directions,
                        "queries_per_input": float(sig.queries.mean()),
                        "queries_max": int(sig.queries.max()),
                        "round_trips": sig.steps,
                        "flipped": float(sig.flipped.mean()),
                        "refused": float(sig.refused.mean()),
                        "served_accuracy": served_accuracy(
                            model, truth.x, truth.y, session.defences, scenario.seed
                        ),
                        # each answered probe releases the input's bit once more
                        "privacy": self.privacy(
                            "answer",
                            {"input (the most probed)": int(sig.queries.max())},
                            session.defences,
                        ),
                    }
                )
                advance()
        one_per_class = np.array([int(np.argmax(truth.y == c)) for c in np.unique(truth.y)])
        common = int(np.bincount(truth.y).argmax())
        # Style is judged without defences where the table has such sessions.
        undefended = "none" if any(s.label == "none" for s in passes) else passes[0].label
        styles = np.flatnonzero(truth.y == common)[:8]
        recon = output.reconstructions
        metrics = {
            "sessions": rows,
            "chance": majority_rate(truth.y),
            "targets": len(truth.y),
            "served_model_test_accuracy": accuracy(predict(model, truth.x_test), truth.y_test),
            "adversary": {
                "aux_images": output.aux_images,
                "directions": p.num_directions,
                "adaptive": p.adaptive,
                "pilot_queries_per_direction": received.pilot_queries_per_direction,
                "training_signature_queries_per_input": output.training_queries,
                "decoder_history": output.decoder_history,
            },
            "failures": received.failures,
            "wire": received.wire,
        }
        plots = {
            "originals": truth.x[one_per_class],
            "sessions": [(f"{s.kind} / {s.label}", recon[k][one_per_class])
                         for k, s in enumerate(passes)],
            "style_class": common,
            "style_originals": truth.x[styles],
            "style_sessions": [(f"{s.kind} ({s.label})", recon[k][styles])
                               for k, s in enumerate(passes) if s.label == undefended],
        }  # fmt: skip
        return Evaluation(metrics, plots)

    def _dataset(self) -> MNIST:
        return DATASETS.get("mnist")(self.scenario.dataset.params, self.scenario.seed, None)

    def _own_images(self) -> tuple[np.ndarray, np.ndarray]:
        """The adversary's own images: MNIST 40,000 on, disjoint from every target."""
        x_train, y_train = self._dataset().images(train=True)
        span = slice(ATTACKER_TRAIN[0], ATTACKER_TRAIN[0] + self.params.aux_size)
        return x_train[span], y_train[span]

    def _served(self, received: ProbeReceived) -> torch.nn.Module:
        model = served_network(self.scenario)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in received.served.items()})
        return model.eval()

    def _search_args(self) -> dict:
        p = self.params
        return {"eps_start": p.eps_start, "eps_max": p.eps_max, "tolerance": p.tolerance,
                "max_steps": p.max_steps}  # fmt: skip


def served_model(build, x, y, root: str, seed: int, epochs: int, advance) -> torch.nn.Module:
    """Train the served classifier (Adam 1e-3, batch 64) or load it from the cache."""
    # Seeded before it is built: its initial weights come from the global generator, which
    # whatever ran earlier in the process has moved (two fresh processes trained two
    # different served models before). One thread, as the reference classifier: the cache
    # keeps whichever process trained first, and the result must not depend on which.
    torch.manual_seed(seeds.int_seed(seed, "probe.served_model"))
    model = build()
    shape = "-".join(f"{k}{tuple(v.shape)}" for k, v in model.state_dict().items())
    key = hashlib.sha256(f"{shape}|{len(x)}|{seed}|{epochs}".encode()).hexdigest()[:12]
    path = Path(root) / "splitsim-cache" / f"probe_served_{key}_seeded_1t.pt"

    def load() -> torch.nn.Module:
        model.load_state_dict(torch.load(path, weights_only=True))
        advance(n=epochs)
        return model.eval()

    # cells side by side: one trains, the others wait and read
    return compute_once(path, lambda: _fit_served(model, x, y, seed, epochs, advance, path), load)


def _fit_served(model, x, y, seed: int, epochs: int, advance, path: Path) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seeds.int_seed(seed, "probe.served_model"))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    with one_thread():
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
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_atomic(path, buffer.getvalue())
    return model.eval()


def _name(key: tuple[str, str, Plan]) -> str:
    kind, label, chosen = key
    if label == "none" and chosen.votes == 1:
        return kind
    return f"{kind} / {label} ({chosen.votes} votes, {chosen.directions} directions)"


def cached_signatures(
    model, x, dirs, search_args: dict, root: str, advance, *, votes: int = 1,
    defences: list | None = None, seed: int = 0,
):  # fmt: skip
    """The adversary's signatures of its own images, computed once per model, directions,
    images and search settings (they dominate the cost), then read from the cache.
    ``defences`` (scenario entries) and ``votes``: the adaptive adversary's simulation of a
    session, the defences' randomness drawn from ``seed``."""
    digest = hashlib.sha256()
    for v in model.state_dict().values():
        digest.update(v.numpy().tobytes())
    digest.update(dirs.tobytes())
    digest.update(x.tobytes())
    digest.update(repr(sorted(search_args.items())).encode())
    digest.update(b"channels_last")  # the search's layout (attack.search_copy)
    if defences or votes != 1:  # the plain prober's key has neither
        described = [(d.name, d.params.model_dump()) for d in defences or []]
        digest.update(repr((votes, described, seed)).encode())
    path = Path(root) / "splitsim-cache" / f"probe_signatures_{digest.hexdigest()[:16]}.npz"

    def load() -> Signatures:
        with np.load(path, allow_pickle=False) as f:
            advance(n=search_args["max_steps"])
            return Signatures(f["eps"], f["flipped"], f["refused"], f["queries"], int(f["steps"]))

    # cells side by side: one searches, the others wait and read
    def search_and_write() -> Signatures:
        return _search_and_write(model, x, dirs, search_args, advance, votes, defences, seed, path)

    return compute_once(path, search_and_write, load)


def _search_and_write(
    model, x, dirs, search_args: dict, advance, votes: int, defences, seed: int, path: Path
) -> Signatures:
    steps = [0]

    def on_step(step: int, left: int) -> None:
        steps[0] = step
        advance()

    built = defence_lib.build(defences or [])
    oracle = local_oracle(model, x, dirs, defences=built, rng=np.random.default_rng(seed))
    sig = search(oracle, len(x), len(dirs), votes=votes, on_step=on_step, **search_args)
    advance(n=search_args["max_steps"] - steps[0])
    buffer = io.BytesIO()
    np.savez(buffer, eps=sig.eps, flipped=sig.flipped, refused=sig.refused, queries=sig.queries,
             steps=sig.steps)  # fmt: skip
    write_atomic(path, buffer.getvalue())
    return sig


def served_accuracy(model, x, y, defences: list, seed: int) -> float:
    """The served model's accuracy on the owners' own inputs under their input-stage defences
    (the only ones that change what an honest evaluation returns)."""
    chosen = [d for d in defence_lib.build(defences) if d.stage == "input"]
    rng = seeds.rng(seed, "probe.served_input_noise")
    return accuracy(predict(model, defence_lib.apply_stage(chosen, "input", x, rng)), y)
