"""Client failures on purpose (``engine.faults``): a participant raises, or hangs past the
server's ``engine.client_timeout_s``, on its first ``attempts`` tries in the rounds named. Shared
by the roles that handle failures (``fault_tolerant``)."""

from __future__ import annotations

import time
from pathlib import Path

from splitsim.scenario import Engine


class SimulatedFault(RuntimeError):
    """A participant failure the scenario asked for (``engine.faults``)."""


def maybe_fail(engine: Engine, pid: int, rnd: int, phase: str, storage: Path) -> None:
    for fault in engine.faults:
        if fault.partition != pid or rnd not in fault.rounds or fault.phase != phase:
            continue
        # Tries are counted in the participant's storage: Flower drops a node's context.state
        # changes when its ClientApp raises, and a retry may run in another Ray actor.
        counter = storage / f"tries-{pid}-{phase}-{rnd}"
        count = (int(counter.read_text()) if counter.exists() else 0) + 1
        counter.write_text(str(count))
        if count > fault.attempts:
            return
        if fault.kind == "hang":  # validation asks for a timeout next to a hang
            time.sleep((engine.client_timeout_s or 0.0) + HANG_PAST_S)
            return
        raise SimulatedFault(f"participant {pid} failed in round {rnd} ({phase}, try {count})")


# A hanging participant answers this long after the server has stopped waiting for it (a
# fixed 45 s was no hang at all under a longer timeout).
HANG_PAST_S = 5.0
