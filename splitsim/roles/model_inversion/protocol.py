"""Model inversion's split training: the shared exchange (engine/split_training.py) with the
server's loss and schedule, and Appendix A's other parties of papers/003.

- ``access: colluding``: after inference, one data owner hands the server its segment and its
  images (a ``collude`` message).
- ``access: intercepting``: the attacker is a data owner (``role.colluder``), not the server.
  After inference the server answers the victim (``role.victim``) for its test tensors, as
  split inference does (an ``answer`` message), and the malicious owner gets a copy of that
  exchange: an ``intercept`` message whose ``intercepted`` record holds the victim's tensors
  exactly as they crossed the wire and the server's answers to them. That message is how the
  simulation models a tap on the victim's link, and ``wire.jsonl`` logs it as such (phase
  ``intercept``). The malicious owner replies with what it holds: the copy and its own
  segment, the weights every owner received for inference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from splitsim.engine import split_training
from splitsim.engine.codec import arrays_to_record, record_to_arrays
from splitsim.engine.failures import ClientFailed
from splitsim.engine.split_training import SplitOutcome, SplitSetting, load_checkpoint
from splitsim.scenario import Scenario

__all__ = ["SplitOutcome", "client_app", "load_checkpoint", "server_app", "setting",
           "split_parts"]  # fmt: skip


def setting(scenario: Scenario) -> SplitSetting:
    p = scenario.role.params
    intercepting = p.access == "intercepting"
    return SplitSetting(
        schedule=p.schedule,
        task_loss=p.task_loss,
        labels=scenario.deployment.labels,
        colluder=p.colluder if p.access == "colluding" else None,
        handover=(p.aux_size, p.val_size),
        observer=p.colluder if intercepting else None,
        target=p.victim if intercepting else None,
        phase=_owner_phase if intercepting else None,
        finish=_intercept if intercepting else None,
    )


def split_parts(scenario: Scenario) -> tuple[Any, Any]:
    return split_training.split_parts(scenario)


def client_app(scenario: Scenario, storage: str, keep: str | None = None) -> ClientApp:
    return split_training.client_app(scenario, setting(scenario), storage, keep)


def server_app(scenario: Scenario, *args: Any, **kwargs: Any) -> ServerApp:
    """engine/split_training.server_app under this role's setting."""
    return split_training.server_app(scenario, setting(scenario), *args, **kwargs)


# -- the owners' devices -------------------------------------------------------------------


def _owner_phase(
    scenario: Scenario, setting: SplitSetting, state_dir: str, pid: int, msg: Message
) -> Message:
    """The victim takes the server's answers; the malicious owner reports what it holds."""
    phase = str(msg.content["config"]["phase"])
    if phase == "answer" and pid == setting.target:
        return Message(RecordDict({"meta": ConfigRecord({"answers": 1})}), reply_to=msg)
    if phase == "intercept" and pid == setting.observer:
        held = record_to_arrays(msg.content["intercepted"])
        segment = split_training.owner_weights(scenario, state_dir, pid)
        held |= {f"segment.{k}": v for k, v in segment.items()}
        return Message(RecordDict({"held": arrays_to_record(held)}), reply_to=msg)
    raise ValueError(f"data owner {pid} has no phase {phase!r}")


# -- after inference -------------------------------------------------------------------------


def _intercept(
    setting: SplitSetting, grid: Grid, send: Any, node_of: dict[int, int],
    outcome: SplitOutcome, rnd: int,
) -> None:  # fmt: skip
    """Answer the victim, hand the malicious owner a copy of that exchange, and put what the
    malicious owner holds in ``outcome.observed``."""
    victim, spy = setting.target, setting.observer
    if victim not in outcome.inference:
        raise ClientFailed(f"the victim data owner {victim} sent no inference tensors")
    z = outcome.inference[victim]
    outcome.server.eval()
    with torch.no_grad():
        answers = outcome.server(torch.from_numpy(z)).argmax(1).numpy().astype(np.int64)
    answer = RecordDict(
        {
            "config": ConfigRecord({"phase": "answer"}),
            "answers": arrays_to_record({"y": answers}),
        }
    )
    if victim not in send(grid, {victim: answer}, node_of, "answer", rnd):
        raise ClientFailed(f"the victim data owner {victim} took no answers")
    copy = RecordDict(
        {
            "config": ConfigRecord({"phase": "intercept", "victim": victim}),
            "intercepted": arrays_to_record({"z": z, "answers": answers}),
        }
    )
    replies = send(grid, {spy: copy}, node_of, "intercept", rnd + 1)
    if spy not in replies:
        raise ClientFailed(f"the intercepting data owner {spy} did not report")
    outcome.observed = record_to_arrays(replies[spy].content["held"])
