"""Client failures on purpose (``engine.faults``): a participant raises, or hangs past the
server's ``engine.client_timeout_s``, on its first ``attempts`` tries in the rounds named. Shared
by the roles that handle failures (``fault_tolerant``)."""

from __future__ import annotations

import time
from pathlib import Path

from splitsim.scenario import Fault


class SimulatedFault(RuntimeError):
    """A participant failure the scenario asked for (``engine.faults``)."""


def maybe_fail(faults: list[Fault], pid: int, rnd: int, phase: str, storage: Path) -> None:
    for fault in faults:
        if fault.partition != pid or rnd not in fault.rounds or fault.phase != phase:
            continue
        # Tries are counted in the participant's storage: Flower drops a node's context.state
        # changes when its ClientApp raises, and a retry may run in another Ray actor.
        counter = storage / f"tries-{pid}-{phase}-{rnd}"
        count = (int(counter.read_text()) if counter.exists() else 0) + 1
        counter.write_text(str(count))
        if count > fault.attempts:
            return
        if fault.kind == "hang":
            time.sleep(HANG_S)
            return
        raise SimulatedFault(f"participant {pid} failed in round {rnd} ({phase}, try {count})")


HANG_S = 45.0  # a hanging participant answers this late: past any sensible client_timeout_s
