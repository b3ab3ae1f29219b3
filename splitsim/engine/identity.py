"""Which data owner a Flower node is, as the server side may believe it.

A ClientApp states its owner (the ``partition-id`` of its node config) in what it sends. In a
simulation the harness builds every node, so that statement is the identity. Under the
deployment engine the SuperLink authenticates each SuperNode by a public key registered before
the run (``flwr supernode register``), one per data owner, and the harness puts the node ids it
got back in the run config as ``node-owners``. A node's owner is then the one its key was
registered for; a reply that claims another owner is refused, so a rogue node cannot pass its
payload off as somebody else's.
"""

from __future__ import annotations

import json

from flwr.app import Context, Message

from splitsim.engine import hosting

NODE_OWNERS = "node-owners"


class IdentityError(RuntimeError):
    """A node claimed to be a data owner it is not registered as."""


def registered_owners(context: Context) -> dict[int, int] | None:
    """``{node id: owner}`` from the run config, or None where no node was registered."""
    text = str(context.run_config.get(NODE_OWNERS, "") or "")
    if not text:
        return None
    return {int(node): int(owner) for node, owner in json.loads(text).items()}


def owner(reply: Message, declared: int) -> int:
    """The data owner whose ``reply`` this is; ``declared`` is the owner its content names."""
    host = hosting.current()
    registered = None if host is None else registered_owners(host.context)
    if registered is None:
        return int(declared)
    node = reply.metadata.src_node_id
    if node not in registered:
        raise IdentityError(f"node {node} is not a registered data owner")
    if registered[node] != int(declared):
        raise IdentityError(
            f"node {node} is registered as data owner {registered[node]} "
            f"but its reply claims to be data owner {int(declared)}"
        )
    return registered[node]
