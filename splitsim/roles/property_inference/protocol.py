"""The participants of papers/002's federated training, as one Flower ClientApp.

FedAvg itself is Flower's own strategy, honest, in engine/federated.py. This module is the
participants' side, built on each client from the resolved scenario (``client_app``):

- honest participants (partitions ``0 .. clients-1``) train on ``records_per_round`` records of
  their own share each round; the target (``role.target``) draws, in a seeded half of the rounds,
  records of which ``target_fraction`` have the property, and in the others records without it.
  They may defend what they upload (``update`` defences) and how they train (``training``:
  DP-SGD);
- the adversarial participant (the last partition) trains its copy with the multi-task loss and
  keeps, in its own storage, what it needs to infer the target's property from the next global
  model (attack.py says how). It knows only its own records and the global models it receives:
  it is built from a :class:`Population`, which holds no partition and no schedule.

Every message of a training carries its ``experiment`` number (which of the run's alphas is being
trained; a harness control field with no data in it). After the last round the harness asks the
adversary for its observations (a ``report`` query, in the wire log like every other message):
what the attack phase reads.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from splitsim import seeds
from splitsim.data.images import FashionMNIST, _load
from splitsim.data.partitions import non_iid
from splitsim.data.score_data import partition_sizes
from splitsim.defences import apply_stage
from splitsim.defences import build as build_defences
from splitsim.engine import federated
from splitsim.engine.local_training import flat_parameters, load_flat, train_locally
from splitsim.engine.resources import client_device
from splitsim.registry import MODELS
from splitsim.roles.property_inference import attack
from splitsim.scenario import Partitioner, Scenario


def alphas(scenario: Scenario) -> list[float]:
    """The run's adversaries, one federated training each: the scenario's alpha first."""
    p = scenario.role.params
    return [p.alpha] + [a for a in p.compare_alphas if a != p.alpha]


def split(records: int, seed: int, aux_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The task's records (ids 0..records-1): the adversary's own, and the rest."""
    order = seeds.rng(seed, "property.split").permutation(records)
    return np.sort(order[:aux_size]), order[aux_size:]


def shares(
    rest: np.ndarray, clients: int, classes: np.ndarray | None = None,
    partitioner: Partitioner | None = None, seed: int = 0,
) -> list[np.ndarray]:  # fmt: skip
    """Each honest participant's records, out of what the adversary does not hold: an even
    IID split, or the ``partitioner``'s non-IID one by the records' dataset ``classes``."""
    if partitioner is not None and partitioner.name != "iid":
        if classes is None:
            raise ValueError("a non-IID split needs every record's class")
        parts = non_iid(classes[rest], clients, seed, partitioner)
        return [np.sort(rest[part]) for part in parts]
    bounds = np.cumsum([0, *partition_sizes(len(rest), clients)])
    return [np.sort(rest[bounds[i] : bounds[i + 1]]) for i in range(clients)]


def scenario_shares(classes: np.ndarray, scenario: Scenario) -> list[np.ndarray]:
    """The honest participants' shares of the task's records (dataset ``classes``, one per
    record) under the scenario's seed and partitioner."""
    aux_size = scenario.role.params.aux_size
    _, rest = split(len(classes), scenario.seed, aux_size)
    d = scenario.deployment
    return shares(rest, d.clients, classes, d.partitioner, scenario.seed)


def schedule(seed: int, rounds: int) -> np.ndarray:
    """The target's property rounds: 1 where it trains on records with the property."""
    draw = seeds.rng(seed, "property.schedule").random(rounds + 1)
    return (draw < 0.5).astype(np.int64)  # index = round; round 0 unused


def marked_share(records_per_round: int, target_fraction: float) -> int:
    """Records with the property in a draw that has it."""
    return int(round(target_fraction * records_per_round))


def most_records_per_round(labels: np.ndarray, scenario: Scenario) -> int:
    """The largest ``records_per_round`` for which every draw of a training finds enough
    records without replacement (``draw`` and ``adversary_train``): the target's rounds with
    and without the property, the other participants' rounds, and the adversary's synthetic
    pairs and own round from its records. ``labels``: the dataset's training labels."""
    p = scenario.role.params
    task = attack.PropertyTask(tuple(tuple(g) for g in p.task_groups), tuple(p.property_classes))
    classes = labels[np.isin(labels, task.classes)]
    prop = task.prop(classes)
    aux, _ = split(len(prop), scenario.seed, p.aux_size)
    parts = scenario_shares(classes, scenario)
    rounds = schedule(scenario.seed, p.rounds)[1:]
    with_prop, without = bool(rounds.any()), not bool(rounds.all())

    def counts(pool: np.ndarray) -> tuple[int, int]:
        have = int(prop[pool].sum())
        return len(pool) - have, have

    def fits(n: int) -> bool:
        k = marked_share(n, p.target_fraction)
        plain, have = counts(parts[p.target])
        target = (not without or n <= plain) and (not with_prop or (k <= have and n - k <= plain))
        plain, have = counts(aux)
        adversary = n <= plain and k <= have
        others = all(n <= len(part) for i, part in enumerate(parts) if i != p.target)
        return target and adversary and others

    low, high = 0, len(prop)  # fits(low) holds; the answer lies in [low, high]
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


class Population:
    """What any participant may know: the task, the records' task labels and properties, the
    network, the defences. No partition, no schedule: the adversary is built from this."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        p = scenario.role.params
        self.p = p
        self.clients = scenario.deployment.clients
        self.task = attack.PropertyTask(
            tuple(tuple(g) for g in p.task_groups), tuple(p.property_classes)
        )
        labels = self._labels(train=True)
        self._keep = np.flatnonzero(np.isin(labels, self.task.classes))
        self.y, self.prop = self.task.task(labels[self._keep]), self.task.prop(labels[self._keep])
        # the adversary's own labelled records, and the rest
        self.aux, self._rest = split(len(self.y), scenario.seed, p.aux_size)
        self.defences = build_defences(scenario.defences)
        self.groups = len(p.task_groups)

    def _labels(self, train: bool) -> np.ndarray:
        params = self.scenario.dataset.params
        return _load(FashionMNIST, params.root, params.download, train)[1]

    # The images are read where they are used (``_load`` caches them per process).
    def images(self, ids: np.ndarray) -> np.ndarray:
        params = self.scenario.dataset.params
        return _load(FashionMNIST, params.root, params.download, True)[0][self._keep[ids]]

    def build(self) -> torch.nn.Module:
        spec = self.scenario.models.federated
        return MODELS.get(spec.name).build(spec.params, (1, 28, 28), self.groups)

    def draw(
        self, pool: np.ndarray, rng: np.random.Generator, with_property: bool | None
    ) -> np.ndarray:
        """``records_per_round`` ids from ``pool``: any (None), a ``target_fraction`` share with
        the property (True), or none with it (False)."""
        n = self.p.records_per_round
        if with_property is None:
            return rng.choice(pool, size=n, replace=False)
        plain = pool[self.prop[pool] == 0]
        if not with_property:
            return rng.choice(plain, size=n, replace=False)
        k = marked_share(n, self.p.target_fraction)
        marked = pool[self.prop[pool] == 1]
        return np.concatenate(
            [
                rng.choice(marked, size=k, replace=False),
                rng.choice(plain, size=n - k, replace=False),
            ]
        )

    def honest_update(
        self, weights: dict[str, np.ndarray], ids: np.ndarray, seed: int, noise_seed: tuple
    ) -> dict[str, np.ndarray]:
        """What an honest participant uploads: train locally (DP-SGD if defended), then pass
        the update through its ``update`` defences."""
        net = self.build()
        net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
        before = flat_parameters(net)
        dp = next((d for d in self.defences if d.stage == "training"), None)
        train_locally(
            net,
            self.images(ids),
            self.y[ids],
            epochs=self.p.local_epochs,
            batch_size=self.p.local_batch_size,
            lr=self.p.local_lr,
            seed=seed,
            dp=dp,
            device=client_device(self.scenario.engine),
        )
        update = flat_parameters(net) - before
        rng = seeds.rng(self.scenario.seed, "property.update_noise", *noise_seed)
        update = apply_stage(self.defences, "update", update, rng)
        load_flat(net, before + update)
        return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


class Participants(Population):
    """The honest participants' shares and the target's schedule: the data owners' side (and
    the harness's truth), never the adversary's."""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.classes = self._labels(train=True)[self._keep]  # dataset classes, for non-IID
        self.partitions = scenario_shares(self.classes, scenario)
        self.schedule = schedule(scenario.seed, self.p.rounds)

    def round_records(self, pid: int, rnd: int) -> np.ndarray:
        rng = seeds.rng(self.scenario.seed, "property.round_records", pid, rnd)
        if pid == self.p.target:
            return self.draw(self.partitions[pid], rng, bool(self.schedule[rnd]))
        return self.draw(self.partitions[pid], rng, None)


@functools.lru_cache(maxsize=4)
def _participants(text: str) -> Participants:
    return Participants(_scenario(text))


@functools.lru_cache(maxsize=4)
def _population(text: str) -> Population:
    return Population(_scenario(text))


def _scenario(text: str) -> Scenario:
    from splitsim.scenario import validate

    return validate(json.loads(text), "the run's scenario")


def participants(scenario: Scenario) -> Participants:
    """The honest participants' side, built once per process and scenario."""
    return _participants(json.dumps(scenario.resolved()))


def population(scenario: Scenario) -> Population:
    """The adversary's side: no partition, no schedule."""
    return _population(json.dumps(scenario.resolved()))


def client_app(scenario: Scenario, storage: str) -> federated.ClientApp:
    """Every participant's ClientApp: honest ones, and the adversary (the last partition)."""
    return federated.client_app(
        functools.partial(_train, scenario, storage),
        functools.partial(_evaluate, scenario, storage),
        scenario.engine,
        storage,
        report=functools.partial(_report, storage),
    )


def _store(storage: str, experiment: int) -> attack.AdversaryStore:
    return attack.AdversaryStore(Path(storage) / f"adversary-{experiment}")


def _observed(population: Population) -> slice:
    return attack.layer_slice(population.build(), population.p.observe)


def _train(
    scenario: Scenario, storage: str, pid: int, rnd: int, weights: dict, config: dict
) -> tuple[dict, dict]:
    k = int(config["experiment"])
    p = scenario.role.params
    if pid != scenario.deployment.clients:
        people = participants(scenario)
        ids = people.round_records(pid, rnd)
        seed = seeds.int_seed(scenario.seed, "property.local_training", pid, rnd)
        return people.honest_update(weights, ids, seed, (k, pid, rnd)), {"num-examples": len(ids)}
    adversary = population(scenario)
    out = adversary_train(
        adversary, _store(storage, k), alphas(scenario)[k], rnd, weights, _observed(adversary)
    )
    return out, {"num-examples": p.records_per_round}


def _evaluate(
    scenario: Scenario, storage: str, pid: int, rnd: int, weights: dict, config: dict
) -> tuple[dict, dict]:
    """The adversary sees the round's aggregate: the others' mean update, one observation."""
    if pid == scenario.deployment.clients:
        store = _store(storage, int(config["experiment"]))
        pending = store.take_pending(rnd)
        if pending is not None:
            adversary = population(scenario)
            net = adversary.build()
            net.load_state_dict({n: torch.from_numpy(v.copy()) for n, v in weights.items()})
            others = attack.others_update(
                pending[0], flat_parameters(net), pending[1], scenario.deployment.clients + 1
            )
            store.save_observed(rnd, others[_observed(adversary)])
    return {}, {"num-examples": 1}


def _report(storage: str, config: dict) -> dict[str, np.ndarray]:
    """The adversary hands the harness what it observed and simulated, per round."""
    return _store(storage, int(config["experiment"])).report()


def adversary_train(
    population: Population,
    store: attack.AdversaryStore,
    alpha: float,
    rnd: int,
    weights: dict[str, np.ndarray],
    observed: slice,
) -> dict[str, np.ndarray]:
    """The adversary's round: synthetic updates from ``w_t`` on its own records (with and
    without the property), then its own (multi-task) training, whose weights it uploads."""
    p = population.p
    seed = population.scenario.seed
    engine = population.scenario.engine
    rng = seeds.rng(seed, "property.synthetic", rnd)
    net = population.build()
    net.load_state_dict({n: torch.from_numpy(v.copy()) for n, v in weights.items()})
    before = flat_parameters(net)
    feats, labels = [], []
    known = population.defences if p.adaptive else []
    for j in range(p.synthetic):
        for with_property in (False, True):
            ids = population.draw(population.aux, rng, with_property)
            local_seed = seeds.int_seed(seed, "property.synthetic", rnd, j, with_property)
            if known:
                out = population.honest_update(
                    weights, ids, local_seed, (population.clients + 1, rnd, j)
                )
                net_j = population.build()
                net_j.load_state_dict({n: torch.from_numpy(v) for n, v in out.items()})
            else:
                net_j = population.build()
                load_flat(net_j, before)
                train_locally(
                    net_j, population.images(ids), population.y[ids], epochs=p.local_epochs,
                    batch_size=p.local_batch_size, lr=p.local_lr, seed=local_seed,
                    device=client_device(engine),
                )  # fmt: skip
            feats.append((flat_parameters(net_j) - before)[observed])
            labels.append(int(with_property))
    store.save_synthetic(rnd, np.stack(feats).astype(np.float32), np.array(labels))

    head = torch.nn.Linear(net.feature_dim, 2)
    torch.manual_seed(seeds.int_seed(seed, "property.init", 1))
    head.reset_parameters()
    store.load_head(head)
    ids = rng.choice(population.aux, size=p.records_per_round, replace=False)
    train_locally(
        net,
        population.images(ids),
        population.y[ids],
        epochs=p.local_epochs,
        batch_size=p.local_batch_size,
        lr=p.local_lr,
        seed=seeds.int_seed(seed, "property.local_training", population.clients, rnd),
        head=head,
        p=population.prop[ids],
        alpha=alpha,
        device=client_device(engine),
    )
    store.save_head(head)
    after = flat_parameters(net)
    store.save_pending(rnd, before, after - before)
    return {n: v.detach().numpy().copy() for n, v in net.state_dict().items()}
