"""``engine.mode: deployment``: the scenario under Flower's deployment engine on loopback.

One ``flower-superlink`` and one ``flower-supernode`` per Flower node of the role, each its own
process in its own working directory and temp folder, set up the way Flower recommends for a
real federation: TLS with a certificate authority made for this run, and SuperNode
authentication (``--enable-supernode-auth``), each data owner's key registered with ``flwr
supernode register`` before its SuperNode starts. A SuperNode with another key is refused, and
the server knows which data owner a node is from its registered key (``engine/identity.py``).
Then ``flwr run`` submits the package's
Flower App (splitsim/flower_app.py) with the resolved scenario in its run config. Each SuperNode
builds the role's ClientApp from the package code and that scenario; nothing written by the
server reaches a data owner but Flower messages. The SuperLink starts the ServerApp process,
which runs the whole scenario into the run folder; SuperNodes start a ClientApp process per
message, as Flower's deployment engine does. Processes, the nodes' folders and the Flower home
live in a temporary folder that is removed afterwards unless the run failed (its logs are named
then).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from splitsim.engine.credentials import Certificates, loopback_certificates, node_key
from splitsim.engine.identity import NODE_OWNERS
from splitsim.registry import ROLES
from splitsim.scenario import Scenario, dump_yaml

CONNECTION = "splitsim-loopback"
START_WAIT_S = 60.0

APP_TOML = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "splitsim-deployment"
version = "1.0.0"
description = "splitsim scenario under Flower's deployment engine"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "splitsim"

[tool.flwr.app.components]
serverapp = "splitsim.flower_app:server"
clientapp = "splitsim.flower_app:client"

[tool.flwr.app.config]
scenario = ""
scenario-yaml = ""
set = ""
out = ""
result-file = ""
node-owners = ""
"""


def flower_tool(name: str) -> str:
    """A Flower command of this Python's installation (the one that runs the scenario)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install flwr in this environment")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"a Flower process exited at start (exit {process.returncode}); see {log}"
            )
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(
        f"a Flower process did not listen on port {port} within {START_WAIT_S:.0f} s; see {log}"
    )


@dataclass(frozen=True)
class Loopback:
    env: dict[str, str]  # the environment for ``flwr`` commands
    owners: dict[int, int]  # registered node id -> data owner
    certificates: Certificates
    port: int


def register_node(public_key: Path, env: dict[str, str]) -> int:
    """``flwr supernode register``: the node id the SuperLink gives this key."""
    command = [flower_tool("flwr"), "supernode", "register", str(public_key), CONNECTION]
    done = subprocess.run(
        [*command, "--format", "json"], env=env, capture_output=True, text=True, check=False
    )
    start = done.stdout.find("{")
    reply = json.loads(done.stdout[start:]) if start >= 0 else {}
    if done.returncode != 0 or not reply.get("success"):
        raise RuntimeError(
            f"flwr supernode register failed (exit {done.returncode}): "
            f"{(done.stdout + done.stderr).strip()[-300:]}"
        )
    return int(reply["node-id"])


def supernode_command(
    port: int, node_port: int, certificates: Certificates, key: Path | None, node_config: str
) -> list[str]:
    """A SuperNode that checks the SuperLink's certificate and signs in with ``key``."""
    auth = [] if key is None else ["--auth-supernode-private-key", str(key)]
    return [
        flower_tool("flower-supernode"), "--root-certificates", str(certificates.ca),
        "--superlink", f"127.0.0.1:{port}", "--port", str(node_port), *auth,
        "--node-config", node_config,
    ]  # fmt: skip


@contextmanager
def loopback(nodes: int, work: Path, threads: int) -> Iterator[Loopback]:
    """A SuperLink and ``nodes`` SuperNodes on 127.0.0.1, under TLS and SuperNode
    authentication. A SuperNode's ClientApps get ``threads`` CPU threads, as a Ray actor with
    that many CPUs does (Ray sets OMP_NUM_THREADS), so their float reductions run in the same
    order."""
    env = {**os.environ, "FLWR_HOME": str(work / "flwr-home")}
    Path(env["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
    port = free_port()
    certificates = loopback_certificates(work / "certificates")
    processes: list[subprocess.Popen] = []

    def start(
        name: str, args: list[str], extra: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen:
        log = work / f"{name}.log"
        handle = log.open("w")
        process = subprocess.Popen(
            args, env={**env, **(extra or {})}, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd
        )
        processes.append(process)
        return process

    try:
        link = start("superlink", [
            flower_tool("flower-superlink"), "--port", str(port),
            "--ssl-ca-certfile", str(certificates.ca), "--ssl-certfile", str(certificates.cert),
            "--ssl-keyfile", str(certificates.key), "--enable-supernode-auth",
            # the app runs in this environment: no per-run virtualenv, no installs
            "--disable-runtime-dependency-installation",
        ])  # fmt: skip
        (Path(env["FLWR_HOME"]) / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\n'
            f"root-certificates = {json.dumps(str(certificates.ca))}\n"
        )
        _wait_for_port(port, link, work / "superlink.log")
        owners: dict[int, int] = {}
        for pid in range(nodes):
            node_port = free_port()
            # Each data owner's machine: its own working directory, temp folder and key,
            # nothing in common with the SuperLink or the other owners.
            home = work / f"node-{pid}"
            (home / "tmp").mkdir(parents=True, exist_ok=True)
            key, public = node_key(home, "supernode-key")
            owners[register_node(public, env)] = pid
            config = f"partition-id={pid} num-partitions={nodes}"
            node = start(
                f"supernode-{pid}",
                supernode_command(port, node_port, certificates, key, config),
                {"OMP_NUM_THREADS": str(threads), "TMPDIR": str(home / "tmp")},
                cwd=home,
            )
            _wait_for_port(node_port, node, work / f"supernode-{pid}.log")
        yield Loopback(env, owners, certificates, port)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def flwr_run(app: Path, config: dict[str, str], env: dict[str, str], work: Path) -> None:
    """``flwr run <app> <loopback connection> --stream`` with ``config`` as the run config
    (written to a TOML file: no shell quoting); returns when the run's log stream ends."""
    run_config = work / "run_config.toml"
    run_config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
    command = [flower_tool("flwr"), "run", str(app), CONNECTION, "--run-config", str(run_config)]
    subprocess.run([*command, "--stream"], env=env, check=False)


def wait_for_file(path: Path, seconds: float = 30.0) -> bool:
    """The ServerApp writes its result file as it ends, possibly after the last log line."""
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return path.exists()


def portable(scenario: Scenario) -> dict:
    """The resolved scenario with a relative dataset root made absolute: the SuperNodes run
    in folders of their own, and find the owners' files where this machine has them."""
    data = scenario.resolved()
    root = data.get("dataset", {}).get("root")
    if isinstance(root, str):
        data["dataset"]["root"] = str(Path(root).resolve())
    return data


def run_deployed(scenario: Scenario, console: Console, out: str | None) -> Path | None:
    """Run ``scenario`` on a loopback SuperLink and SuperNodes; its run folder when complete,
    None when not. The ServerApp process prints the progress and the closing table."""
    nodes = ROLES.get(scenario.role.name).flower_nodes(scenario)
    work = Path(tempfile.mkdtemp(prefix="splitsim-deploy-"))
    app = work / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(APP_TOML)
    result_file = work / "result.json"
    config = {
        # The resolved scenario itself travels in the run config: the ServerApp and every
        # SuperNode's ClientApp are built from it, with no file or folder in common.
        "scenario-yaml": dump_yaml(portable(scenario)),
        "out": str(Path(out or scenario.output_dir).resolve()),
        "result-file": str(result_file),
    }
    console.print(
        f"Flower deployment engine: 1 SuperLink and {nodes} SuperNodes on loopback, TLS and "
        f"SuperNode authentication (logs in {work})"
    )
    started = time.perf_counter()
    with loopback(nodes, work, max(1, int(scenario.engine.num_cpus))) as link:
        config[NODE_OWNERS] = json.dumps({str(node): pid for node, pid in link.owners.items()})
        flwr_run(app, config, link.env, work)
        wait_for_file(result_file)
    outcome = json.loads(result_file.read_text()) if result_file.exists() else {}
    if "folder" in outcome:
        console.print(f"deployment engine: {time.perf_counter() - started:.1f} s")
        shutil.rmtree(work, ignore_errors=True)
        return Path(outcome["folder"])
    reason = outcome.get("error", "no result from the ServerApp")
    console.print(f"[red]the deployed run failed[/red]: {reason}; Flower logs in {work}")
    return None
