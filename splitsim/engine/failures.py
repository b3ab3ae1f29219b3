"""``engine.on_client_failure`` for one exchange: a node that replies with an error, or stays
silent past ``engine.client_timeout_s``, is retried (``retry``, up to ``engine.client_retries``
more tries), left out (``skip``), or ends the run (``fail``). Every failed try is recorded, with
the node, phase, try and what was done, for ``results.json``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from splitsim.engine.grid import exchange, reply_timeout
from splitsim.engine.wire import WireLog
from splitsim.scenario import Engine


class ClientFailed(RuntimeError):
    """A node failed and the policy is ``fail``, or the role cannot go on without it."""


@dataclass
class Policy:
    """One scenario's policy, and the failures it has seen."""

    engine: Engine
    wire: WireLog
    batch: int = 10_000
    failures: list[dict[str, object]] = field(default_factory=list)
    # False where the protocol cannot go on without every node (the prober's search needs
    # every owner's bits): under ``skip`` a node given up on then ends the run
    can_skip: bool = True

    def send(
        self,
        grid: Grid,
        contents: dict[int, RecordDict],
        phase: str,
        rnd: int,
        handle: Callable[[Message], None],
        on_given_up: Callable[[int], None] = lambda node: None,
    ) -> list[int]:
        """Send ``contents[node]`` to each node, ``handle`` every good reply, and return the
        nodes that answered; a node given up on (``skip``, or out of retries) goes to
        ``on_given_up``."""
        engine = self.engine
        timeout = reply_timeout(engine.client_timeout_s)
        pending, answered, attempt = sorted(contents), [], 0
        while pending:
            messages = []
            for node in pending:
                self.wire.to_node(rnd, phase, node, contents[node])
                messages.append(Message(contents[node], dst_node_id=node, message_type="query"))
            failed: dict[int, str] = {}

            def logged(reply: Message, failed: dict[int, str] = failed) -> None:
                node = reply.metadata.src_node_id
                self.wire.from_node(rnd, phase, reply)  # an error reply too: the log misses nothing
                if reply.has_error():
                    failed[node] = reply.error.reason
                    return
                handle(reply)
                answered.append(node)

            for node in exchange(grid, messages, self.batch, logged, timeout):
                failed[node] = f"no reply within {timeout:g} s"
            retry = []
            for node in sorted(failed):
                last = engine.on_client_failure != "retry" or attempt >= engine.client_retries
                stop = engine.on_client_failure == "fail" or (last and not self.can_skip)
                action = "failed" if stop else "skipped" if last else "retried"
                self.failures.append({
                    "node": node, "phase": phase, "attempt": attempt + 1,
                    "error": (failed[node].strip().splitlines() or [""])[-1][:300],
                    "action": action,
                })  # fmt: skip
                if stop:
                    cannot = (
                        ""
                        if engine.on_client_failure == "fail"
                        else (
                            " (this role cannot go on without it; engine.on_client_failure: retry "
                            "tries again)"
                        )
                    )
                    raise ClientFailed(f"node {node} failed in {phase}: {failed[node]}{cannot}")
                if last:
                    on_given_up(node)
                else:
                    retry.append(node)
            pending, attempt = retry, attempt + 1
        return sorted(answered)
