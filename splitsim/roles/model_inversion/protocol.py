"""Model inversion's split training: the shared exchange (engine/split_training.py) with the
server's loss and schedule, a colluding data owner that hands over its segment and images
(papers/003, Appendix A), and no curious owner."""

from __future__ import annotations

from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from splitsim.engine import split_training
from splitsim.engine.split_training import SplitOutcome, SplitSetting, load_checkpoint
from splitsim.scenario import Scenario

__all__ = ["SplitOutcome", "client_app", "load_checkpoint", "server_app", "setting",
           "split_parts"]  # fmt: skip


def setting(scenario: Scenario) -> SplitSetting:
    p = scenario.role.params
    return SplitSetting(
        schedule=p.schedule,
        task_loss=p.task_loss,
        labels=scenario.deployment.labels,
        colluder=p.colluder if p.access == "colluding" else None,
        handover=(p.aux_size, p.val_size),
    )


def split_parts(scenario: Scenario) -> tuple[Any, Any]:
    return split_training.split_parts(scenario)


def client_app(scenario: Scenario, storage: str, keep: str | None = None) -> ClientApp:
    return split_training.client_app(scenario, setting(scenario), storage, keep)


def server_app(scenario: Scenario, *args: Any, **kwargs: Any) -> ServerApp:
    """engine/split_training.server_app under this role's setting."""
    return split_training.server_app(scenario, setting(scenario), *args, **kwargs)
