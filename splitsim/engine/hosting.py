"""A scenario whose ServerApp is hosted by a Flower SuperLink (``flwr run``, or
``engine.mode: deployment``) instead of by ``run_simulation``.

The harness runs inside the SuperLink's ServerApp process. Each Flower phase of a role (a
``simulate(server_app, client_app, ...)`` call) then runs the role's own ServerApp on the grid
Flower handed us, after publishing the role's own ClientApp for the SuperNodes: cloudpickled to
``<job dir>/client-<k>.pkl`` with a ``current`` pointer written after it, both atomically.
The package's ClientApp component (``splitsim.flower_app:client``) loads the current one and
delegates every message to it, so the ServerApp and ClientApps are the very objects the
simulation runs; only the transport changes.

The job directory must be one filesystem for the SuperLink and every SuperNode (true on
loopback; a shared mount across machines), like the split-learning node-state files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from splitsim.engine.grid import wait_for_nodes
from splitsim.runs import write_atomic

NODE_WAIT_S = 120.0


def job_dir(context: Context) -> Path:
    """Where this Flower run's ClientApps are published: ``job-dir`` from the run config, else
    a per-run folder in the system temp folder (SuperLink and SuperNodes on one machine)."""
    base = str(context.run_config.get("job-dir", "") or "")
    root = Path(base) if base else Path(tempfile.gettempdir()) / "splitsim-flower"
    return root / str(context.run_id)


@dataclass
class Hosted:
    grid: Grid
    context: Context
    folder: Path
    phase: int = 0

    def serve(self, server_app: ServerApp, client_app: ClientApp, nodes: int) -> None:
        self.phase += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / f"client-{self.phase}.pkl", cloudpickle.dumps(client_app))
        write_atomic(self.folder / "current", str(self.phase))
        self._wait_for(nodes)
        server_app(self.grid, self.context)

    def _wait_for(self, nodes: int) -> None:
        try:
            wait_for_nodes(self.grid, nodes, NODE_WAIT_S)
        except TimeoutError as err:
            found = len(list(self.grid.get_node_ids()))
            raise RuntimeError(
                f"the scenario needs {nodes} Flower nodes but {found} connected to the "
                f"SuperLink within {NODE_WAIT_S:.0f} s: start {nodes} SuperNodes with "
                f"--node-config 'partition-id=<0..{nodes - 1}> num-partitions={nodes}', "
                f"or for Flower's local simulation pass "
                f"--federation-config 'num-supernodes={nodes}' to flwr run"
            ) from err


_hosted: Hosted | None = None


def current() -> Hosted | None:
    return _hosted


@contextmanager
def hosted(grid: Grid, context: Context) -> Iterator[Hosted]:
    """Within this block every ``simulate`` call runs on ``grid`` instead of a Ray simulation."""
    global _hosted
    _hosted = Hosted(grid, context, job_dir(context))
    try:
        yield _hosted
    finally:
        _hosted = None


_loaded: dict[Path, tuple[bytes, ClientApp]] = {}


def published_client(context: Context) -> ClientApp:
    """The ClientApp the ServerApp published for the phase under way (cached per process: a
    Ray actor of ``flwr run``'s local simulation serves many messages)."""
    folder = job_dir(context)
    try:
        phase = (folder / "current").read_bytes()
    except FileNotFoundError:
        raise RuntimeError(
            f"no ClientApp published in {folder}: this SuperNode does not share the "
            "SuperLink's job folder (run config 'job-dir')"
        ) from None
    cached = _loaded.get(folder)
    if cached is None or cached[0] != phase:
        app = cloudpickle.loads((folder / f"client-{phase.decode()}.pkl").read_bytes())
        cached = _loaded[folder] = (phase, app)
    return cached[1]
