"""``flwr.simulation.run_simulation`` on the Ray backend, with our engine settings applied."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from flwr.app import Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from splitsim.scenario import Engine

if TYPE_CHECKING:
    import torch


def resolve_device(engine: Engine) -> str:
    """``auto`` is CUDA when this process sees a GPU, else the CPU."""
    import torch

    if engine.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return engine.device


def client_device(engine: Engine) -> str:
    """Where a client app computes, decided inside its Ray actor: ``engine.client_device``
    'auto' or 'cuda' use the GPU share Ray gives an actor with ``engine.num_gpus > 0``.
    Without a share, clients stay on the CPU even when the machine has a GPU: Ray is told not to
    hide GPUs from zero-GPU actors (quiet_flower), and a client must not use a GPU Ray did not
    reserve for it."""
    import torch

    if engine.client_device == "cpu" or engine.num_gpus == 0:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if engine.client_device == "cuda":
        raise RuntimeError("engine.client_device is 'cuda' but this client's actor sees no GPU")
    return "cpu"


def release_cuda(device: str | torch.device) -> None:
    """After a client call on the GPU: hand the cached blocks back, so that an actor Ray keeps
    alive between calls holds only its CUDA context, not the last call's tensors."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def backend_config(engine: Engine) -> dict:
    """Flower's Ray backend settings: per-client resources, and either a local Ray (capped to
    ``ray_cpus``) or, with ``ray_address``, an existing cluster, which keeps its own size."""
    init_args: dict = {"log_to_driver": False, "include_dashboard": False}
    if engine.ray_address is not None:
        init_args["address"] = engine.ray_address
    else:
        # Without it ray.init() joins whatever cluster `ray start` last recorded on this
        # machine (and hangs if that cluster has died): a local run must stay local.
        init_args["address"] = "local"
        if engine.ray_cpus is not None:
            init_args["num_cpus"] = engine.ray_cpus
    return {
        "client_resources": {"num_cpus": engine.num_cpus, "num_gpus": engine.num_gpus},
        "init_args": init_args,
    }


def quiet_flower() -> None:
    """Flower and Ray log every round at INFO and warn that run_simulation is deprecated (it
    still is the in-process simulation entry point in flwr 1.41); our progress bars replace
    that chatter, errors still show."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    warnings.filterwarnings("ignore", category=FutureWarning, module="ray")


def simulate(server_app: ServerApp, client_app: ClientApp, nodes: int, engine: Engine) -> None:
    """Run one Flower phase of a role: on the SuperLink's grid when a SuperLink hosts this
    scenario (engine/hosting.py), else in Flower's Ray simulation engine."""
    from splitsim.engine import hosting

    if (host := hosting.current()) is not None:
        host.serve(server_app, client_app, nodes)
        return
    from flwr.simulation import run_simulation  # imports Ray, which a hosted run never needs

    quiet_flower()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=nodes,
        backend_config=backend_config(engine),
    )


FAST_PULL_S = 0.002
PULL_PER_AWAITED_S = 0.0002
SLOW_PULL_S = 0.05


def pull_interval(awaited: int) -> float:
    """Seconds between polls for replies, growing with the number still awaited.

    Flower's grid polls every 0.1 s: with a round trip per batch (split training) or per FedAvg
    phase, that polling, not the work, set the pace, so one reply awaited is polled every 2 ms.
    But a poll asks the link state about every awaited reply: at 100 data owners, polling every
    2 ms drew a fifth of py-spy's samples of the server process, whose core the actors need.
    Spacing polls by 0.2 ms per awaited reply keeps the cost per second flat; replies from 100
    owners on two actors arrive about every 75 ms (scripts/bench_split.py), so the 20 ms
    interval there delays none by much."""
    return min(SLOW_PULL_S, max(FAST_PULL_S, awaited * PULL_PER_AWAITED_S))


def send_and_receive(
    grid: Grid, messages: Iterable[Message], timeout: float | None = None
) -> list[Message]:
    """``Grid.send_and_receive`` with polling paced by ``pull_interval``: push every message,
    then pull replies until all are in or ``timeout`` seconds have passed."""
    awaited = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while awaited:
        got = list(grid.pull_messages(awaited))
        replies.extend(got)
        awaited.difference_update(reply.metadata.reply_to_message_id for reply in got)
        if not awaited or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(pull_interval(len(awaited)))
    return replies


def wait_for_nodes(grid: Grid, expected: int, timeout: float = 300.0) -> list[int]:
    """Node ids, once all expected nodes have registered (the list starts empty)."""
    deadline = time.monotonic() + timeout
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= expected:
            return ids
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(ids)} of {expected} Flower nodes registered")
        time.sleep(0.05)


def exchange(
    grid: Grid, messages: list[Message], batch: int, on_reply: Callable[[Message], None]
) -> None:
    """Send in batches of ``batch`` messages so progress moves and memory stays bounded."""
    for start in range(0, len(messages), batch):
        for reply in send_and_receive(grid, messages[start : start + batch]):
            on_reply(reply)
