"""Flower's own simulation loop and grid, without splitsim: the round trip to one node and one
message to every node, for docs/flower_upstream.md.

    python scripts/flower_loop_check.py --nodes 500                      # the installed Flower
    PYTHONPATH=/tmp/flwr-patched python scripts/flower_loop_check.py     # a patched copy

The ServerApp uses Flower's ``grid.send_and_receive``; each ClientApp adds 1 to a number. Prints
the mean of 20 round trips to one node, the time for one message to each of ``--nodes`` nodes,
and whether every reply was right.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import flwr  # noqa: E402
from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

client = ClientApp()


@client.query()
def add_one(msg: Message, context: Context) -> Message:
    return Message(number(int(msg.content["c"]["x"]) + 1), reply_to=msg)


def number(x: int) -> RecordDict:
    return RecordDict({"c": ConfigRecord({"x": x})})


def server_app(nodes: int, out: dict) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        while len(list(grid.get_node_ids())) < nodes:
            time.sleep(0.05)
        ids = sorted(grid.get_node_ids())
        grid.send_and_receive([Message(number(0), ids[0], "query")])  # the actors warm up
        started = time.perf_counter()
        right = True
        for i in range(20):
            (reply,) = grid.send_and_receive([Message(number(i), ids[0], "query")])
            right &= int(reply.content["c"]["x"]) == i + 1
        out["round_trip_ms"] = (time.perf_counter() - started) / 20 * 1000
        started = time.perf_counter()
        replies = grid.send_and_receive([Message(number(n % 1000), n, "query") for n in ids])
        out["all_nodes_s"] = time.perf_counter() - started
        got = sorted(int(m.content["c"]["x"]) for m in replies)
        out["right"] = right and got == sorted(n % 1000 + 1 for n in ids)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    out: dict = {}
    run_simulation(
        server_app(args.nodes, out),
        client,
        args.nodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"log_to_driver": False, "include_dashboard": False, "address": "local"},
        },
    )
    print(
        f"flwr {flwr.__version__} from {os.path.dirname(flwr.__file__)}, {args.nodes} nodes: "
        f"round trip {out['round_trip_ms']:.1f} ms, a message to every node "
        f"{out['all_nodes_s']:.2f} s, replies right: {out['right']}"
    )


if __name__ == "__main__":
    main()
