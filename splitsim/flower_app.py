"""splitsim as a Flower App: the ``serverapp`` and ``clientapp`` components named in
pyproject's ``[tool.flwr.app.components]``, so ``flwr run .`` runs a scenario the way Flower
users already work, and ``engine.mode: deployment`` runs one on a loopback SuperLink.

Run config (``[tool.flwr.app.config]``, overridable with ``flwr run --run-config``):

- ``scenario``: the scenario YAML; a relative path is looked up from the working directory,
  then from the folder holding the ``splitsim`` package (the app's root in a FAB);
- ``set``: overrides, ``key=value`` separated by ``;`` (``--set`` of the CLI);
- ``out``: the runs folder (default: the scenario's ``output_dir``);
- ``job-dir``: where the ServerApp publishes ClientApps for the SuperNodes (engine/hosting.py);
- ``result-file``: if set, the ServerApp writes ``{"folder": ...}`` or ``{"error": ...}``
  there when it ends (how ``engine.mode: deployment`` learns the outcome).

Every SuperNode needs ``--node-config 'partition-id=<i> num-partitions=<n>'`` as Flower's
simulation gives its nodes: the partition is which data owner the node is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

import splitsim
from splitsim.engine import hosting
from splitsim.errors import ScenarioError

server = ServerApp()


def scenario_path(name: str) -> Path:
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path
    packaged = Path(splitsim.__file__).resolve().parents[1] / path
    return packaged if packaged.exists() else path


def overrides(text: str) -> list[str]:
    return [part.strip() for part in text.split(";") if part.strip()]


@server.main()
def main(grid: Grid, context: Context) -> None:
    from splitsim.execute import run_scenario
    from splitsim.runs import write_json
    from splitsim.scenario import load_scenario

    config = context.run_config
    result_file = str(config.get("result-file", "") or "")
    outcome: dict[str, str] = {}
    try:
        scenario = load_scenario(
            scenario_path(str(config["scenario"])), overrides(str(config.get("set", "")))
        )
        with hosting.hosted(grid, context) as host:
            try:
                folder = run_scenario(scenario, Console(), str(config.get("out", "")) or None)
            finally:
                shutil.rmtree(host.folder, ignore_errors=True)
        outcome = {"folder": str(folder.resolve())}
    except BaseException as err:
        bad_input = isinstance(err, ScenarioError)  # the CLI's one-line form
        outcome = {"error": f"error: {err}" if bad_input else f"{type(err).__name__}: {err}"}
        raise
    finally:
        if result_file:
            write_json(Path(result_file), outcome)


class PublishedClientApp(ClientApp):
    """Hands every message to the ClientApp the ServerApp published for the current phase."""

    def __call__(self, message: Message, context: Context) -> Message:
        if "partition-id" not in context.node_config:
            raise RuntimeError(
                "this SuperNode has no partition-id: start it with "
                "--node-config 'partition-id=<i> num-partitions=<n>'"
            )
        return hosting.published_client(context)(message, context)


client = PublishedClientApp()
