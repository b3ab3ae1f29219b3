"""Flower's simulation loop, handing out messages as they are stored instead of every 0.1 s.

Flower's Ray simulation engine moves messages from its in-memory link state to the actors'
queue in one thread (flwr 1.42, ``server/superlink/fleet/vce/vce_api.py``,
``add_messages_to_queue``): every 0.1 s it asks the link state for one message per node, for
every node, and each ask (``InMemoryLinkState.get_message_ins``) walks every stored message. So

- a message waits up to 0.1 s before an actor sees it: split learning's round trip per batch
  waits on that tick (1.41x the plain process at 2 owners, docs/split_learning.md);
- one sweep costs nodes x stored messages: 10,000 Covid owners, a node each, spent 437 s in
  Flower, the driver at 100 % of a core while the actors idled (docs/benchmarks.md).

``add_messages_to_queue`` below does the same job with an index by destination node, fed as
the link state stores each message, and wakes up on a new message instead of the tick. What a
node is handed, and in which order, is Flower's: at most one message per node per sweep, the
oldest undelivered first, the same expiry and federation checks, nodes in registration order.
Only the waiting differs (docs/flower_upstream.md has the patch and the measurements).

It replaces the one function in ``vce_api`` for the Flower versions it was checked against
(``CHECKED``); under any other version the simulation runs Flower's own loop, and says so once.
``engine.flower_loop: stock`` turns it off, to compare.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from queue import Queue

import flwr
from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkState
from flwr.supercore.date import now

# The versions whose vce_api.add_messages_to_queue and InMemoryLinkState.get_message_ins were
# read and this replacement tested against (tests/test_flower_speed.py).
CHECKED = frozenset({"1.42.0"})

# Flower's own tick: how soon the loop notices the stop event when nothing arrives.
STOP_CHECK_S = 0.1

_flower_loop = vce_api.add_messages_to_queue
_log = logging.getLogger(__name__)
_told: set[str] = set()


def use(fast: bool) -> bool:
    """Run the next simulations in this process with the indexed loop (``fast``) or with
    Flower's own; True when the indexed loop is in place."""
    if fast and flwr.__version__ not in CHECKED:
        if flwr.__version__ not in _told:
            _told.add(flwr.__version__)
            _log.warning(
                "flwr %s: running Flower's own simulation loop (the indexed one was checked "
                "against flwr %s only)",
                flwr.__version__,
                ", ".join(sorted(CHECKED)),
            )
        fast = False
    vce_api.add_messages_to_queue = add_messages_to_queue if fast else _flower_loop
    return fast


def add_messages_to_queue(
    state: LinkState,
    queue: Queue[Message],
    nodes_mapping: dict[int, int],
    f_stop: threading.Event,
) -> None:
    """Put Messages in the queue from the LinkState: ``vce_api.add_messages_to_queue``, same
    signature, without the tick."""
    if not isinstance(state, InMemoryLinkState):  # the index reads the in-memory store
        _flower_loop(state, queue, nodes_mapping, f_stop)
        return
    inbox = Inbox(state, nodes_mapping)
    try:
        while not f_stop.is_set():
            for message in inbox.sweep():
                queue.put(message)
            inbox.wait(STOP_CHECK_S)
    finally:
        inbox.close()


class Inbox:
    """The link state's undelivered messages, by destination node, in the order stored.

    The index is fed by the state's own ``store_message_ins`` (wrapped on this instance, under
    the state's lock, so the order is the store's), and checked against the store when a
    message is handed out: a message deleted, expired or already delivered is skipped."""

    def __init__(self, state: InMemoryLinkState, nodes_mapping: dict[int, int]) -> None:
        self._state = state
        self._rank = {node: rank for rank, node in enumerate(nodes_mapping)}
        self._queued: dict[int, deque[str]] = {}
        # On the state's own RLock: storing, indexing and handing out never interleave.
        self._stored = threading.Condition(state.lock)
        store = state.store_message_ins

        def store_and_index(message: Message) -> str | None:
            with self._stored:
                message_id = store(message)
                if message_id is not None:
                    self._add(message.metadata.dst_node_id, message_id)
                    self._stored.notify()
            return message_id

        with self._stored:
            state.store_message_ins = store_and_index  # type: ignore[method-assign]
            # The ServerApp starts before the loop (Ray's start-up lies between): what it
            # stored meanwhile is indexed here, in the store's order.
            for message_id, message in list(state.message_ins_store.items()):
                self._add(message.metadata.dst_node_id, message_id)

    def _add(self, node: int, message_id: str) -> None:
        if node in self._rank:  # Flower's loop asks only the simulation's own nodes
            self._queued.setdefault(node, deque()).append(message_id)

    def sweep(self) -> list[Message]:
        """At most one message per node, the oldest undelivered, nodes in registration
        order; marked delivered, as ``get_message_ins`` does."""
        handed: list[Message] = []
        with self._stored:
            for node in sorted(self._queued, key=self._rank.__getitem__):
                waiting = self._queued[node]
                while waiting:
                    message = self._deliverable(waiting.popleft(), node)
                    if message is not None:
                        handed.append(message)
                        break
                if not waiting:
                    del self._queued[node]
        delivered_at = now().isoformat()
        for message in handed:
            message.metadata.delivered_at = delivered_at
        return handed

    def _deliverable(self, message_id: str, node: int) -> Message | None:
        state = self._state
        state._check_stored_messages({message_id})  # deletes it if expired, as Flower does
        message = state.message_ins_store.get(message_id)
        if (
            message is not None
            and message.metadata.dst_node_id == node
            and message.metadata.delivered_at == ""
        ):
            return message
        return None

    def wait(self, timeout: float) -> None:
        """Until a message is stored, or ``timeout`` seconds; at once if some are queued."""
        with self._stored:
            if not self._queued:
                self._stored.wait(timeout)

    def close(self) -> None:
        with self._stored:
            del self._state.store_message_ins  # the class's own method again
