"""Messages over a Flower ``Grid``: pushing, polling for replies at a pace that suits the number
awaited, waiting for nodes to register. Shared by every role's ServerApp, simulated or hosted."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

FAST_PULL_S = 0.002
PULL_PER_AWAITED_S = 0.0002
SLOW_PULL_S = 0.05
ASK_ALL_S = 1.0


def pull_interval(awaited: int) -> float:
    """Seconds between polls for replies, growing with the number still awaited.

    Flower's grid polls every 0.1 s: with a round trip per batch (split training) or per FedAvg
    phase, that polling, not the work, set the pace, so one reply awaited is polled every 2 ms.
    But a poll asks the link state about every awaited reply: at 100 data owners, polling every
    2 ms drew a fifth of py-spy's samples of the server process, whose core the actors need.
    Spacing polls by 0.2 ms per awaited reply keeps the cost per second flat; replies from 100
    owners on two actors arrive about every 75 ms (scripts/bench_split.py), so the 20 ms
    interval there delays none by much."""
    return min(SLOW_PULL_S, max(FAST_PULL_S, awaited * PULL_PER_AWAITED_S))


def send_and_receive(
    grid: Grid, messages: Iterable[Message], timeout: float | None = None
) -> list[Message]:
    """``Grid.send_and_receive``: push every message, then pull replies until all are in or
    ``timeout`` seconds have passed.

    In the simulation with engine/flower_speed.py's loop, the link state says which replies
    have come, and those are pulled as they come: a pull asks the state about every message
    it names (at 10,000 Covid owners, polling a batch of 100 was a fifth of the driver's
    time). Without it (Flower's own loop, a deployment), polls are paced by
    ``pull_interval``. Either way the whole batch is asked about at least every
    ``ASK_ALL_S``, as Flower's own poll would: that is where the link state reports a
    message that expired or a node that left."""
    # Here, not at the top: the data owners' actors import this module too, and Flower's
    # link-state modules that flower_speed needs cost them 1.9 s of import each.
    from splitsim.engine import flower_speed

    state = getattr(grid, "state", None)  # the in-memory grid's link state
    awaited = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while awaited:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = flower_speed.replied(
            state, awaited, ASK_ALL_S if left is None else min(ASK_ALL_S, left)
        )
        got = list(grid.pull_messages(ready or awaited))
        replies.extend(got)
        awaited.difference_update(reply.metadata.reply_to_message_id for reply in got)
        if not awaited or (deadline is not None and time.monotonic() >= deadline):
            break
        if ready is None:
            time.sleep(pull_interval(len(awaited)))
    return replies


def wait_for_nodes(grid: Grid, expected: int, timeout: float = 300.0) -> list[int]:
    """Node ids, once all expected nodes have registered (the list starts empty)."""
    deadline = time.monotonic() + timeout
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= expected:
            return ids
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(ids)} of {expected} Flower nodes registered")
        time.sleep(0.05)


def exchange(
    grid: Grid,
    messages: list[Message],
    batch: int,
    on_reply: Callable[[Message], None],
    timeout: float | None = None,
) -> list[int]:
    """Send in batches of ``batch`` messages so progress moves and memory stays bounded;
    each batch waits at most ``timeout`` seconds. Returns the nodes that did not answer."""
    silent: list[int] = []
    for start in range(0, len(messages), batch):
        part = messages[start : start + batch]
        answered = set()
        for reply in send_and_receive(grid, part, timeout=timeout):
            answered.add(reply.metadata.src_node_id)
            on_reply(reply)
        silent += [m.metadata.dst_node_id for m in part if m.metadata.dst_node_id not in answered]
    return silent


DEFAULT_TIMEOUT_S = 600.0


def reply_timeout(seconds: float | None) -> float:
    """How long a ServerApp waits for one exchange's replies: ``engine.client_timeout_s``, or
    ten minutes, so that one silent client ends a run with its name instead of hanging it."""
    return seconds if seconds is not None else DEFAULT_TIMEOUT_S


class ServerError:
    """Where a role's ServerApp leaves the error it stopped on: Flower only logs an exception
    raised in a ServerApp, so the harness re-raises it after the phase (``Role.flower``)."""

    error: BaseException | None = None


def surfaced(holder: ServerError) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a ServerApp's ``main`` so that its error is kept on ``holder``."""

    def wrap(main: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(main)
        def guarded(*args: object, **kwargs: object) -> None:
            try:
                main(*args, **kwargs)
            except BaseException as err:
                holder.error = err
                raise

        return guarded

    return wrap
