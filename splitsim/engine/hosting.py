"""A scenario whose ServerApp is hosted by a Flower SuperLink (``flwr run``, or
``engine.mode: deployment``) instead of by ``run_simulation``.

The harness runs inside the SuperLink's ServerApp process. Each Flower phase of a role (a
``simulate(server_app, client_app, ...)`` call) then runs the role's own ServerApp on the grid
Flower handed us. The ClientApps are not sent: every SuperNode builds the role's ClientApp
itself, from the package code and the resolved scenario in the run config
(``splitsim.flower_app:client``), the way Flower Apps work. So no code or pickle written by the
server side reaches a data owner, and the SuperNodes share no folder with the SuperLink.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from splitsim.engine.grid import wait_for_nodes

NODE_WAIT_S = 120.0


@dataclass
class Hosted:
    grid: Grid
    context: Context
    phase: int = 0

    def serve(self, server_app: ServerApp, nodes: int) -> None:
        self.phase += 1
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
    _hosted = Hosted(grid, context)
    try:
        yield _hosted
    finally:
        _hosted = None
