"""splitsim as a Flower App: the ``serverapp`` and ``clientapp`` components named in
pyproject's ``[tool.flwr.app.components]``, so ``flwr run .`` runs a scenario the way Flower
users already work, and ``engine.mode: deployment`` runs one on a loopback SuperLink.

Run config (``[tool.flwr.app.config]``, overridable with ``flwr run --run-config``):

- ``scenario``: the scenario YAML; a relative path is looked up from the working directory,
  then from the folder holding the ``splitsim`` package (the app's root in a FAB);
- ``scenario-yaml``: the resolved scenario itself, as YAML text (what ``engine.mode:
  deployment`` sends); it takes the place of ``scenario`` and ``set``;
- ``set``: overrides, ``key=value`` separated by ``;`` (``--set`` of the CLI);
- ``out``: the runs folder (default: the scenario's output_dir);
- ``result-file``: if set, the ServerApp writes ``{"folder": ...}`` or ``{"error": ...}``
  there when it ends (how ``engine.mode: deployment`` learns the outcome);
- ``node-owners``: ``{"<node id>": <owner>}`` as JSON, the node ids the SuperLink gave each data
  owner's registered key (SuperNode authentication; ``engine.mode: deployment`` fills it in).
  With it the server takes a node's owner from its key and refuses a reply that claims another;
  without it, from the ``partition-id`` the node states, as in a simulation.

Both sides build what they run from the package code and that scenario: the ServerApp runs the
harness, and the ClientApp on every SuperNode builds the role's own ClientApp
(``Role.client_app``), keeping the node's state in its own temp folder. Nothing else passes
between them but Flower messages.

Every SuperNode needs ``--node-config 'partition-id=<i> num-partitions=<n>'`` as Flower's
simulation gives its nodes: the partition is which data owner the node is.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

import splitsim
from splitsim.engine import hosting
from splitsim.errors import ScenarioError
from splitsim.scenario import Scenario

server = ServerApp()


def scenario_path(name: str) -> Path:
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path
    packaged = Path(splitsim.__file__).resolve().parents[1] / path
    return packaged if packaged.exists() else path


def overrides(text: str) -> list[str]:
    return [part.strip() for part in text.split(";") if part.strip()]


def run_config_scenario(config: dict) -> Scenario:
    """The scenario a Flower run carries: resolved YAML text, or a file with overrides."""
    from splitsim.scenario import load_scenario, validate

    text = str(config.get("scenario-yaml", "") or "")
    if text:
        return validate(yaml.safe_load(text), "run config scenario-yaml")
    return load_scenario(
        scenario_path(str(config["scenario"])), overrides(str(config.get("set", "")))
    )


@server.main()
def main(grid: Grid, context: Context) -> None:
    from splitsim.execute import run_scenario
    from splitsim.runs import write_json

    config = context.run_config
    result_file = str(config.get("result-file", "") or "")
    outcome: dict[str, str] = {}
    try:
        scenario = run_config_scenario(dict(config))
        with hosting.hosted(grid, context):
            folder = run_scenario(scenario, Console(), str(config.get("out", "")) or None)
        outcome = {"folder": str(folder.resolve())}
    except BaseException as err:
        bad_input = isinstance(err, ScenarioError)  # the CLI's one-line form
        outcome = {"error": f"error: {err}" if bad_input else f"{type(err).__name__}: {err}"}
        raise
    finally:
        if result_file:
            write_json(Path(result_file), outcome)


_built: dict[int, ClientApp] = {}


def node_storage(context: Context) -> str:
    """This node's own folder for the run: in its temp folder, on its own machine."""
    pid = int(context.node_config["partition-id"])
    folder = Path(tempfile.gettempdir()) / f"splitsim-node-{context.run_id}-{pid}"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


class RoleClientApp(ClientApp):
    """Builds the scenario's role's ClientApp on this SuperNode and hands it every message."""

    def __call__(self, message: Message, context: Context) -> Message:
        if "partition-id" not in context.node_config:
            raise RuntimeError(
                "this SuperNode has no partition-id: start it with "
                "--node-config 'partition-id=<i> num-partitions=<n>'"
            )
        app = _built.get(context.run_id)
        if app is None:
            from splitsim.registry import ROLES

            scenario = run_config_scenario(dict(context.run_config))
            role = ROLES.get(scenario.role.name)
            app = _built[context.run_id] = role.client_app(scenario, node_storage(context))
        return app(message, context)


client = RoleClientApp()
