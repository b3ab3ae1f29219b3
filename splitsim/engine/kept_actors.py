"""Flower's Ray actors kept from one run to the next in one process, on an existing cluster.

Flower's Ray backend creates its actors when a simulation starts. When the simulation ends, it
ends them and its Ray connection (flwr 1.42, ``server/superlink/fleet/vce/backend/
raybackend.py``). Each actor is a new process that imports torch, Flower and the role before
it serves its first message. A process that runs many scenarios on one cluster pays that for
every run: a loop over seeds in Python, or the test suite. Measured on the idle 2-core machine,
with a small Covid run (40 phones, one epoch) on a one-CPU loopback head:
- a fresh actor: 3.7 s of the head's CPU, 4.7-5.2 s wall;
- a waiting actor: 0.1 s of the head's CPU, 1.7-1.9 s wall.

With ``SPLITSIM_KEEP_ACTORS=1``, a run that joins an existing cluster (``engine.ray_address``
or ``RAY_ADDRESS``) leaves its actors and its connection up when it ends with every actor idle.
The next run in the process uses them when it asks for the same thing:
- the same Ray settings (the cluster's address among them);
- the same resources per client;
- the same ``sys.path``, which the actors were given as ``PYTHONPATH``.

Anything else ends the kept ones first:
- a run on another cluster, or on a local Ray;
- kept actors that do not answer;
- a ``compare`` in the same process, whose cells ask the same cluster for CPUs.

A run that ends with an actor still busy (a participant that hung past the server's timeout)
keeps nothing. The kept actors hold their resources until then, or until the process ends and
Ray ends its job. Off by default: a process that runs one scenario gains nothing, and its
actors would hold the cluster's CPUs for as long as it lives.

An actor keeps only its imported modules and per-process caches from one run to the next.
The caches are keyed by what they hold: a scenario's text, a dataset's files. The apps are
stateless (engine/shipped_app.py). So a run's numbers do not depend on which runs the actor
served before; tests/test_kept_actors.py checks that.

It replaces Flower's backend class for the Flower versions it was checked against
(``CHECKED``); under any other version every run gets Flower's own backend.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass

import flwr
from flwr.server.superlink.fleet.vce.backend import raybackend
from flwr.simulation.ray_transport.ray_actor import BasicActorPool

# The versions whose RayBackend (init_ray, build, terminate) and BasicActorPool were read
# and this subclass tested against (tests/test_kept_actors.py).
CHECKED = frozenset({"1.42.0"})
ANSWER_S = 30.0  # kept actors that have not answered by then are given up

FLOWERS_BACKEND = raybackend.RayBackend
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Kept:
    key: str
    pool: BasicActorPool


_kept: _Kept | None = None


def wanted(joins_cluster: bool, version: str = flwr.__version__) -> bool:
    """Whether a run's actors are kept for the next: it joins an existing cluster, the user
    asked (``SPLITSIM_KEEP_ACTORS=1``), and the installed Flower is one this was checked on."""
    return joins_cluster and os.environ.get("SPLITSIM_KEEP_ACTORS") == "1" and version in CHECKED


def use(keep: bool) -> None:
    """Before a simulation: its backend keeps its actors (``keep``), or is Flower's own, and
    then nothing kept stays up (the run may start a Ray of its own, which a live connection
    to another cluster would stand in for)."""
    if not keep:
        release()
    # vce_api's backend_fn looks the class up in this module when the simulation starts
    raybackend.RayBackend = KeepingRayBackend if keep else FLOWERS_BACKEND


def kept() -> int:
    """How many actors are kept now."""
    return 0 if _kept is None else _kept.pool.num_actors


def release() -> None:
    """End the kept actors and the connection they came with; nothing if none are kept."""
    global _kept
    held, _kept = _kept, None
    if held is None:
        return
    import ray

    for actor in held.pool.pool:
        try:
            ray.kill(actor)
        except Exception:  # a cluster that has gone: the actors went with it
            break
    ray.shutdown()


def _key(backend_config: dict) -> str:
    return json.dumps([backend_config, sys.path], sort_keys=True, default=repr)


def _answers(pool: BasicActorPool) -> bool:
    import ray

    try:
        ray.get([actor.__ray_ready__.remote() for actor in pool.pool], timeout=ANSWER_S)
    except Exception as error:  # dead actors, a cluster that has gone: start afresh
        _log.warning("kept Ray actors did not answer (%s); starting new ones", error)
        return False
    return True


class KeepingRayBackend(FLOWERS_BACKEND):  # type: ignore[misc,valid-type]
    """Flower's RayBackend, which hands its actors on to the next run instead of ending them."""

    def __init__(self, backend_config: dict) -> None:
        self._key = _key(backend_config)
        if _kept is not None and (_kept.key != self._key or not _answers(_kept.pool)):
            release()
        super().__init__(backend_config)  # joins the cluster unless the kept connection is up

    def build(self, app_fn) -> None:  # noqa: ANN001  (Flower's signature)
        global _kept
        if _kept is not None:  # the same settings, and its actors answered (__init__)
            # taken out while the run holds them: a release() now must not end them
            self.pool, self.app_fn, _kept = _kept.pool, app_fn, None
            return
        super().build(app_fn)

    def terminate(self) -> None:
        global _kept
        pool = self.pool
        idle = pool is not None and pool.num_actors > 0 and len(pool.pool) == pool.num_actors
        if idle and _kept is None:  # (another simulation's, in another thread: not two)
            _kept = _Kept(self._key, pool)  # ready for the next run
            return
        super().terminate()
