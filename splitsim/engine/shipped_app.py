"""A ClientApp that reaches each Ray actor once, not with every message.

Flower's Ray backend sends the ClientApp along with every message it hands an actor
(``RayBackend.process_message``: ``actor.run.remote(app_fn, message, cid, context)``), and
Ray pickles it again each time: 0.2-0.4 ms of the driver's one core per message for our
handlers (cloudpickle walks the app, and for each function looks up its module), which at
10,000 data owners, two messages each, is several seconds of the Flower phase. A
``ShippedApp`` is pickled once, as bytes; what travels with a message is those bytes and a
token, and an actor unpickles the app the first time it sees the token and keeps it.

The apps are stateless (a node's state lives in ``context.state`` or the node's own files),
so an actor that reuses one runs each message exactly as a freshly unpickled copy would."""

from __future__ import annotations

import uuid

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

# Ray's own copy of cloudpickle, the one that pickles the app for every message otherwise:
# the simulation has Ray, and splitsim declares no cloudpickle of its own.
from ray import cloudpickle


class ShippedApp:
    """Stands for ``app`` in ``run_simulation``; it unpickles as ``app`` itself."""

    def __init__(self, app: ClientApp) -> None:
        self._app = app
        self._token = uuid.uuid4().hex
        self._pickled = cloudpickle.dumps(app)

    def __call__(self, message: Message, context: Context) -> Message:
        return self._app(message=message, context=context)

    def __reduce__(self) -> tuple[object, tuple[str, bytes]]:
        return _unpickled, (self._token, self._pickled)


_kept: dict[str, ClientApp] = {}


def _unpickled(token: str, pickled: bytes) -> ClientApp:
    """The app behind ``token``, unpickled on this actor's first message of the run."""
    app = _kept.get(token)
    if app is None:
        _kept.clear()  # an actor serves one simulation at a time
        app = _kept[token] = cloudpickle.loads(pickled)
    return app
