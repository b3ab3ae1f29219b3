"""Split hijacking's split training: the shared exchange (engine/split_training.py) with a server
that answers each owner batch through attack.py's ``Hijacker``
(FSHA's gradient, or the task gradient for the honest server).

The owners may run SplitGuard (``defences: [{name: splitguard}]``, a ``detector`` defence the
shared exchange runs on each owner's device): fake batches go out with the labels, and an owner
whose score says "hijacked" answers ``stopped`` and leaves. After inference the harness asks
every owner, in one ``detector`` message each (in ``wire.jsonl``), for its SplitGuard log: its
scores, the fake batch behind each, and how many gradients it kept per set. The server's attack
never reads that log; the evaluation does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from splitsim.defences.splitguard import SplitGuard
from splitsim.engine import split_training
from splitsim.engine.codec import arrays_to_record, record_to_arrays
from splitsim.engine.split_training import SplitOutcome, SplitSetting
from splitsim.roles.split_hijacking.attack import Hijacker
from splitsim.scenario import Scenario


def guarded(scenario: Scenario) -> bool:
    return any(spec.name == "splitguard" for spec in scenario.defences)


def setting(scenario: Scenario) -> SplitSetting:
    p = scenario.role.params
    watched = guarded(scenario)
    return SplitSetting(
        schedule=p.schedule,
        labels=scenario.deployment.labels,
        adversary=Hijacker,
        phase=_log if watched else None,
        finish=_ask_for_logs if watched else None,
    )


def client_app(scenario: Scenario, storage: str, keep: str | None = None) -> ClientApp:
    return split_training.client_app(scenario, setting(scenario), storage, keep)


def server_app(scenario: Scenario, *args: Any, **kwargs: Any) -> ServerApp:
    """engine/split_training.server_app under this role's setting."""
    return split_training.server_app(scenario, setting(scenario), *args, **kwargs)


def _log(
    scenario: Scenario, setting: SplitSetting, state_dir: str, pid: int, msg: Message
) -> Message:
    """An owner hands the harness its SplitGuard log."""
    if str(msg.content["config"]["phase"]) != "detector":
        raise ValueError(f"data owner {pid} has no phase {msg.content['config']['phase']!r}")
    log = SplitGuard.log(Path(state_dir), pid)
    return Message(RecordDict({"log": arrays_to_record(log)}), reply_to=msg)


def _ask_for_logs(
    setting: SplitSetting, grid: Grid, send: Any, node_of: dict[int, int],
    outcome: SplitOutcome, rnd: int,
) -> None:  # fmt: skip
    """Every owner's SplitGuard log, stopped or not, into ``outcome.observed``."""
    ask = {pid: RecordDict({"config": ConfigRecord({"phase": "detector"})}) for pid in node_of}
    for pid, reply in send(grid, ask, node_of, "detector", rnd).items():
        for key, value in record_to_arrays(reply.content["log"]).items():
            outcome.observed[f"{pid}.{key}"] = np.asarray(value)
