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
import weakref
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

FLOWERS_LOOP = vce_api.add_messages_to_queue
_log = logging.getLogger(__name__)
_told: set[str] = set()
# The link states an Inbox watches, so that a ServerApp's grid can wait for its replies.
_watched: weakref.WeakKeyDictionary[LinkState, Inbox] = weakref.WeakKeyDictionary()


def use(fast: bool, version: str = flwr.__version__) -> bool:
    """Run the next simulations in this process with the indexed loop (``fast``) or with
    Flower's own; True when the indexed loop is in place. ``version``: the installed Flower's."""
    if fast and version not in CHECKED:
        if version not in _told:
            _told.add(version)
            _log.warning(
                "flwr %s: running Flower's own simulation loop (the indexed one was checked "
                "against flwr %s only)",
                version,
                ", ".join(sorted(CHECKED)),
            )
        fast = False
    vce_api.add_messages_to_queue = add_messages_to_queue if fast else FLOWERS_LOOP
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
        FLOWERS_LOOP(state, queue, nodes_mapping, f_stop)
        return
    inbox = Inbox(state, nodes_mapping)
    try:
        while not f_stop.is_set():
            for message in inbox.sweep():
                queue.put(message)
            inbox.wait(STOP_CHECK_S)
    finally:
        inbox.close()


def replied(state: object, awaited: set[str], timeout: float) -> set[str] | None:
    """Those of the ``awaited`` messages whose reply the watched link ``state`` has stored
    since last asked, waiting up to ``timeout`` seconds for one (empty if none came); None
    when no Inbox watches ``state`` (Flower's own loop, a deployment's grid): then only
    asking the state about every awaited message tells."""
    inbox = _watched.get(state) if isinstance(state, InMemoryLinkState) else None
    return None if inbox is None else inbox.replied(awaited, timeout)


class Inbox:
    """The link state's undelivered messages, by destination node, in the order stored, and
    the messages that have a reply.

    The index is fed by the state's own ``store_message_ins`` (wrapped on this instance, under
    the state's lock, so the order is the store's), and checked against the store when a
    message is handed out: a message deleted, expired or already delivered is skipped.
    ``store_message_res`` is wrapped likewise, to wake a ServerApp waiting for replies."""

    def __init__(self, state: InMemoryLinkState, nodes_mapping: dict[int, int]) -> None:
        self._state = state
        self._rank = {node: rank for rank, node in enumerate(nodes_mapping)}
        self._queued: dict[int, deque[str]] = {}
        self._replied: set[str] = set()
        # On the state's own RLock: storing, indexing and handing out never interleave.
        self._stored = threading.Condition(state.lock)
        self._answered = threading.Condition(state.lock)
        store, store_reply = state.store_message_ins, state.store_message_res

        def store_and_index(message: Message) -> str | None:
            with self._stored:
                message_id = store(message)
                if message_id is not None:
                    self._add(message.metadata.dst_node_id, message_id)
                    self._stored.notify()
            return message_id

        def store_and_tell(message: Message) -> str | None:
            with self._answered:
                message_id = store_reply(message)
                if message_id is not None:
                    self._replied.add(message.metadata.reply_to_message_id)
                    self._answered.notify_all()
            return message_id

        with self._stored:
            state.store_message_ins = store_and_index  # type: ignore[method-assign]
            state.store_message_res = store_and_tell  # type: ignore[method-assign]
            # The ServerApp starts before the loop (Ray's start-up lies between): what it
            # stored meanwhile is indexed here, in the store's order.
            for message_id, message in list(state.message_ins_store.items()):
                self._add(message.metadata.dst_node_id, message_id)
            _watched[state] = self

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

    def replied(self, awaited: set[str], timeout: float) -> set[str]:
        """See ``replied``; each reply is told once."""
        with self._answered:
            ready = self._replied & awaited
            if not ready:
                self._answered.wait(timeout)
                ready = self._replied & awaited
            self._replied -= ready
        return ready

    def close(self) -> None:
        with self._stored:
            _watched.pop(self._state, None)
            del self._state.store_message_ins  # the class's own methods again
            del self._state.store_message_res
