"""``flwr.simulation.run_simulation`` on the Ray backend, with our engine settings applied."""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import MutableMapping
from contextlib import AbstractContextManager, nullcontext

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from splitsim.allocator import child_environment
from splitsim.scenario import Engine


def cluster_address(configured: str | None, sized_locally: bool = False) -> str | None:
    """The existing Ray cluster a run joins: the one its settings name, else the one the
    environment's ``RAY_ADDRESS`` names (Ray's own convention, which ``ray start`` prints),
    unless the settings size a local Ray; None: start a private local Ray."""
    if configured is not None:
        return configured
    if sized_locally:
        return None
    return os.environ.get("RAY_ADDRESS") or None


def backend_config(engine: Engine) -> dict:
    """Flower's Ray backend settings: per-client resources, and either a local Ray (capped to
    ``ray_cpus``) or, with ``ray_address`` (or ``RAY_ADDRESS``), an existing cluster, which
    keeps its own size."""
    from splitsim.engine import local_ray

    init_args: dict = {"log_to_driver": False, "include_dashboard": False}
    address = cluster_address(engine.ray_address, engine.ray_cpus is not None)
    if address is None:  # the run's own head, started when the run began, sized as below
        address = local_ray.address()
    if address is not None:
        init_args["address"] = address
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


def telemetry_defaults(env: MutableMapping[str, str] | None = None) -> None:
    """Flower's telemetry and Ray's usage statistics off, unless the user set them: every
    process splitsim starts inherits this environment."""
    env = os.environ if env is None else env
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Flower reads its setting once, when its telemetry module is imported, and this module's
    # own imports load it (flwr 1.42): tell it too, or the driver still sends Flower's events
    telemetry = sys.modules.get("flwr.supercore.telemetry")
    if telemetry is not None and env is os.environ:
        telemetry.FLWR_TELEMETRY_ENABLED = env["FLWR_TELEMETRY_ENABLED"]


def local_only_ray(env: MutableMapping[str, str] | None = None) -> None:
    """A local Ray listens on loopback only. Ray binds its servers (GCS, raylet, workers,
    agents) to the node's IP, which on Linux is the machine's outward address unless Ray's
    local-only mode is on (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: the node IP is then
    127.0.0.1; measured with ray 2.55, tests/test_hardening.py checks it). Read by Ray when it
    is imported, so this runs before; a user's own setting is kept."""
    env = os.environ if env is None else env
    env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if "ray" in sys.modules and env is os.environ:  # imported already: tell it too
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in (
            "0", "false", "False"
        )  # fmt: skip


def quiet_flower() -> None:
    """Flower and Ray log every round at INFO and warn that run_simulation is deprecated (it
    still is the in-process simulation entry point in flwr 1.41); our progress bars replace
    that chatter, errors still show."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    quiet_ray()
    warnings.filterwarnings("ignore", category=FutureWarning, module="ray")


def quiet_ray(env: MutableMapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    env.setdefault("RAY_DEDUP_LOGS", "0")


def ray_environment(env: MutableMapping[str, str]) -> None:
    """``env`` as a local Ray started by ``simulate`` would see it: what a run's own Ray head
    (engine/local_ray.py), which its workers inherit, starts with."""
    telemetry_defaults(env)
    local_only_ray(env)
    quiet_ray(env)
    child_environment(env)  # the actors' training steps keep their freed memory (allocator.py)


def head_environment() -> dict[str, str]:
    """This process's environment for a loopback head of its own to start with (engine/
    local_ray.py ``start``): no cluster address, and ``ray_environment``'s settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    ray_environment(env)
    return env


def own_ray(engine: Engine, preload: tuple[str, ...] = ()) -> AbstractContextManager:
    """A run's own local Ray head for the block (engine/local_ray.py), where the run would
    start a local Ray: not on a SuperLink's grid or an existing cluster, from the main thread
    on Linux (the kernel's end-with-the-parent signal follows the starting thread: another
    thread's end would stop the head mid-run), and unless ``SPLITSIM_WARM_RAY=0``."""
    from splitsim.engine import hosting, local_ray

    if (
        hosting.current() is not None
        or cluster_address(engine.ray_address, engine.ray_cpus is not None) is not None
        or os.environ.get("SPLITSIM_WARM_RAY", "1") == "0"
        or not sys.platform.startswith("linux")
        or threading.current_thread() is not threading.main_thread()
    ):
        return nullcontext()
    env = head_environment()
    # what Flower's ray.init would hand the job's workers (see _join_warm_head)
    env["PYTHONPATH"] = os.pathsep.join([*sys.path, *filter(None, [env.get("PYTHONPATH")])])
    return local_ray.warm_head(env, engine.ray_cpus, preload)


def _join_warm_head(init_args: dict) -> None:
    """Join the run's own head before Flower does. Flower's ``ray.init`` gives the job a
    runtime environment (the driver's ``sys.path`` as ``PYTHONPATH``), and Ray serves a job
    with a runtime environment only from workers started with it: the head's prestarted
    workers, which have imported what the actors need, stood idle while two new ones started
    and imported it all again (seen with ps: 3 s of CPU each, in the Flower phase). The head
    was started with that ``PYTHONPATH`` in its own environment (``own_ray``), which its
    workers inherit; Flower's backend finds Ray initialised and keeps this connection, and
    shuts it down at the end as it would its own."""
    import ray

    if not ray.is_initialized():  # at Flower's quiet level: no "connecting to..." lines
        ray.init(**init_args, logging_level=logging.WARNING)


def simulate(server_app: ServerApp, client_app: ClientApp, nodes: int, engine: Engine) -> None:
    """Run one Flower phase of a role: on the SuperLink's grid when a SuperLink hosts this
    scenario (engine/hosting.py), else in Flower's Ray simulation engine."""
    from splitsim.engine import hosting

    if (host := hosting.current()) is not None:
        host.serve(server_app, nodes)  # each SuperNode builds its own ClientApp
        return
    telemetry_defaults()
    joins_cluster = cluster_address(engine.ray_address, engine.ray_cpus is not None) is not None
    if not joins_cluster:
        # a local Ray, started now or when the run began (engine/local_ray.py): the driver
        # too must see loopback as the node's address, or Ray reads the head's 127.0.0.1
        # as the machine's outward address and never reaches it
        local_only_ray()
    config = backend_config(engine)
    from flwr.simulation import run_simulation  # imports Ray, which a hosted run never needs

    from splitsim.engine import flower_speed, kept_actors, local_ray
    from splitsim.engine.shipped_app import ShippedApp

    quiet_flower()
    flower_speed.use(engine.flower_loop == "indexed")
    kept_actors.use(kept_actors.wanted(joins_cluster))
    warm = local_ray.address()
    if warm is not None and config["init_args"].get("address") == warm:
        _join_warm_head(config["init_args"])
    run_simulation(
        server_app=server_app,
        client_app=ShippedApp(client_app),  # type: ignore[arg-type]  # unpickles as client_app
        num_supernodes=nodes,
        backend_config=config,
    )
