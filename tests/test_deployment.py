"""Flower's deployment engine on loopback: a SuperLink and two SuperNodes as separate processes.

- ``engine.mode: deployment`` runs the Covid scenario and gives the simulation's numbers
  exactly (same seed, CPU): every SuperNode, in a working directory and temp folder of its
  own, builds the role's ClientApp from the package code and the resolved scenario in the run
  config (no job folder, no pickle), and gets the threads a Ray actor would.
- The repository is a Flower App: ``flwr run <repo> <connection>`` runs a scenario from its
  packaged ``scenarios/`` folder.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from splitsim.cli import main
from splitsim.engine import credentials, deployment, hosting, identity

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "dataset.train_records=3000",
    "dataset.test_records=1000",
    "training.epochs=3",
    "deployment.clients=2",
    "deployment.users=200",
]


def run(out: Path, *extra: str) -> Path:
    args = ["run", str(ROOT / "scenarios" / "hidden_covid_app.yaml"), "--out", str(out)]
    for expr in [*SMALL, *extra]:
        args += ["--set", expr]
    assert main(args) == 0
    (results,) = out.rglob("results.json")
    return results.parent


@pytest.mark.slow
def test_deployment_engine_matches_the_simulation(tmp_path):
    deployed = run(tmp_path / "deployed", "engine.mode=deployment")
    simulated = run(tmp_path / "simulated")
    left = json.loads((deployed / "results.json").read_text())
    right = json.loads((simulated / "results.json").read_text())
    assert left["metrics"] == right["metrics"]
    got, want = np.load(deployed / "received.npz"), np.load(simulated / "received.npz")
    assert sorted(got) == sorted(want)
    assert {"partition", "side/region", "scores"} <= set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    # both nodes answered both phases through the SuperLink, and only scores and region left
    wire = [json.loads(x) for x in (deployed / "wire.jsonl").read_text().splitlines()]
    replies = [w for w in wire if w["sender"] != "server"]
    assert len(replies) == 4 and len({w["sender"] for w in replies}) == 2
    assert (deployed / "scenario.yaml").read_text().count("mode: deployment") == 1


@pytest.mark.slow
def test_the_repository_is_a_flower_app(tmp_path):
    work = tmp_path / "flower"
    work.mkdir()
    result = work / "result.json"
    with deployment.loopback(2, work, threads=1) as link:
        deployment.flwr_run(
            ROOT,
            {
                "scenario": "scenarios/hidden_covid_app.yaml",
                "set": ";".join(SMALL),
                "out": str(tmp_path / "runs"),
                "result-file": str(result),
                "node-owners": json.dumps({str(n): p for n, p in link.owners.items()}),
            },
            link.env,
            work,
        )
        assert deployment.wait_for_file(result)
    folder = Path(json.loads(result.read_text())["folder"])
    assert folder.parent == tmp_path / "runs" / "hidden_covid_app"
    metrics = json.loads((folder / "results.json").read_text())["metrics"]
    assert metrics["deployment"]["secrets"]["cv_risk"]["accuracy"] > 0


@pytest.mark.parametrize("key", ["ray_address=auto", "ray_cpus=2"])
def test_deployment_refuses_ray_settings(tmp_path, capsys, key):
    args = ["run", str(ROOT / "scenarios" / "hidden_covid_app.yaml"), "--out", str(tmp_path / "r"),
            "--set", "engine.mode=deployment", "--set", f"engine.{key}"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"engine.{key.split('=')[0]}: applies to the Ray simulation engine" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_an_unregistered_supernode_is_refused(tmp_path):
    """SuperNode authentication: a node with a key nobody registered, or one that will not
    speak TLS, never joins; the registered node is the only one online."""
    work = tmp_path / "flower"
    work.mkdir()
    with deployment.loopback(1, work, threads=1) as link:
        key, _ = credentials.node_key(tmp_path / "rogue", "key")
        rogue_log, plain_log = tmp_path / "rogue.log", tmp_path / "plain.log"
        commands = [
            deployment.supernode_command(link.port, deployment.free_port(), link.certificates,
                                         key, "partition-id=0 num-partitions=1"),
            [deployment.flower_tool("flower-supernode"), "--insecure", "--superlink",
             f"127.0.0.1:{link.port}", "--port", str(deployment.free_port())],
        ]  # fmt: skip
        rogues = [
            subprocess.Popen(command, env=link.env, stdout=log.open("w"), stderr=subprocess.STDOUT)
            for command, log in zip(commands, [rogue_log, plain_log], strict=True)
        ]
        try:
            deadline = time.monotonic() + 90
            while "Failed to activate SuperNode" not in rogue_log.read_text():
                assert time.monotonic() < deadline, rogue_log.read_text()[-2000:]
                time.sleep(0.5)
            listed = subprocess.run(
                [deployment.flower_tool("flwr"), "supernode", "list", deployment.CONNECTION,
                 "--format", "json"],
                env=link.env, capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
        finally:
            for process in rogues:
                process.kill()
                process.wait()
    assert "Connection attempt failed" in plain_log.read_text()  # no TLS, no connection
    nodes = json.loads(listed.stdout[listed.stdout.find("{") :])["nodes"]
    online = [n for n in nodes if n["status"] == "online"]
    assert [int(n["node-id"]) for n in online] == list(link.owners)


def test_a_reply_claiming_another_owner_is_refused():
    """The server takes a node's owner from its registered key, not from what it says."""
    from flwr.app import Context, Message, Metadata, RecordDict
    from flwr.app.message.message import make_message

    def reply_from(node: int) -> Message:
        meta = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0,
                        reply_to_message_id="m", group_id="", created_at=0.0, ttl=60.0,
                        message_type="query")  # fmt: skip
        return make_message(metadata=meta, content=RecordDict())

    owners = {identity.NODE_OWNERS: json.dumps({"11": 0, "12": 1})}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=owners)
    assert identity.owner(reply_from(11), 0) == 0  # no registry: what the node says
    with hosting.hosted(None, context):
        assert identity.owner(reply_from(12), 1) == 1
        with pytest.raises(identity.IdentityError, match="registered as data owner 1"):
            identity.owner(reply_from(12), 0)
        with pytest.raises(identity.IdentityError, match="not a registered data owner"):
            identity.owner(reply_from(13), 0)
