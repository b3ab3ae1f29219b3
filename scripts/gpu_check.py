"""The steps of ``scripts/gpu_check.sh``: each runs in its own process under its own timeout,
writes ``<work>/<step>.json`` and exits non-zero when its GPU path failed.

    python scripts/gpu_check.py preflight --device cuda --work /tmp/gpu_check
    python scripts/gpu_check.py actors --device cuda --work /tmp/gpu_check
    ...
    python scripts/gpu_check.py report --device cuda --work /tmp/gpu_check --docs docs/benchmarks.md

``--device cpu`` runs the same code on the CPU with tiny sizes (a dry run: the pytest GPU test
is then expected to be skipped, and no GPU memory is read); its report goes to a scratch copy
of the docs unless ``--docs`` says otherwise. ``pack`` (on the machine that has the data)
writes ``.gpu_carry/``: the image datasets gzipped, so that they fit the 64 MiB a device call
carries (``data/`` is 107 MiB unpacked and git-ignored, so it does not travel by itself).

Nothing here touches the network: the datasets come from ``data/`` or ``.gpu_carry/``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
DATA = ROOT / "data"
CARRY = ROOT / ".gpu_carry"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- gpu_check:begin: scripts/gpu_check.sh replaces what follows -->"
END = "<!-- gpu_check:end -->"
DATASETS = ("fashion_mnist", "mnist")  # every scenario the check runs reads one of these
# Import names of the runtime dependencies (pyproject.toml): the GPU image lacks some of them.
MODULES = ("torch", "torchvision", "flwr", "ray", "pydantic", "yaml", "numpy", "sklearn",
           "matplotlib", "rich", "markdown", "skimage", "opacus", "psutil")  # fmt: skip
PYTEST_GPU_TEST = "tests/test_scale.py::test_federated_clients_train_on_their_gpu_share"
# Figures the docs already give for the 2-core CPU box (docs/hidden_images.md and
# docs/perturbation_probe.md), quoted beside the GPU's.
CPU_BOX_TABLE1_EPOCH_S = 39.8
CPU_BOX_SIGNATURES_S_PER_1000 = 78.0 / 3.0


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def cuda(device: str) -> bool:
    return device == "cuda"


def run_scenario(name: str, overrides: list[str], out: Path) -> dict[str, Any]:
    """One real ``python -m splitsim run`` in this process (so that this process's CUDA
    allocator statistics cover the driver's work); its results.json."""
    from splitsim.cli import main

    args = ["run", str(ROOT / "scenarios" / name), "--out", str(out)]
    for expr in overrides:
        args += ["--set", expr]
    code = main(args)
    if code != 0:
        raise RuntimeError(f"splitsim run {name} exited {code}")
    (found,) = out.rglob("results.json")
    return json.loads(found.read_text())


def driver_cuda_peak() -> float | None:
    """Peak CUDA memory this process allocated, MiB; None on the CPU. Above zero proves the
    driver's training really ran on the GPU, whatever ``engine.device`` resolved to."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


# -- preflight -------------------------------------------------------------------------------


def unpack_carried() -> list[str]:
    """Fill ``data/`` from ``.gpu_carry/`` (gzipped IDX and the cache), locally."""
    from splitsim.data import fetch

    done = []
    for name in DATASETS:
        gz = CARRY / fetch.FOLDERS[name] / "raw"
        if fetch.missing_files(DATA, name) and gz.is_dir():
            fetch.unpack_gz(sorted(gz.glob("*.gz")), fetch.raw_folder(DATA, name))
            done.append(name)
    cache = CARRY / "splitsim-cache"
    if cache.is_dir():
        (DATA / "splitsim-cache").mkdir(parents=True, exist_ok=True)
        for f in cache.iterdir():
            target = DATA / "splitsim-cache" / f.name
            if not target.exists():
                shutil.copy2(f, target)
    return done


def preflight(args: argparse.Namespace) -> dict[str, Any]:
    import importlib

    import torch

    # First, before the slower imports: a machine without a GPU is told so in seconds.
    if cuda(args.device) and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch: this check needs one NVIDIA GPU")
    missing = []
    for module in MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise SystemExit(
            f"missing Python packages: {', '.join(missing)}; carry their wheels "
            "(/work/.library/device/README.md, the .whl recipe) and install them first"
        )
    import flwr
    import ray

    from splitsim.data import fetch

    unpacked = unpack_carried()
    absent = [n for n in DATASETS if fetch.missing_files(DATA, n)]
    if absent:
        raise SystemExit(
            f"datasets absent from {DATA}: {', '.join(absent)} (nothing is downloaded here); on "
            "the machine that has them run `bash scripts/gpu_check.sh --pack` and carry "
            "'.gpu_carry' (run's carry: [\".gpu_carry\"])"
        )
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "flwr": flwr.__version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "unpacked": unpacked,
    }
    if cuda(args.device):
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_mib": props.total_memory // 2**20,
                 "gpus": torch.cuda.device_count()}  # fmt: skip
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            info["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 else None
    else:
        info |= {"gpu": "none (dry run on the CPU)", "gpus": 0}
    return info


# -- GPU memory of Ray actors ----------------------------------------------------------------


class GpuMemory:
    """Per-process and whole-device GPU memory, through NVML (nvidia-ml-py) or nvidia-smi."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.smi = shutil.which("nvidia-smi")
        with contextlib.suppress(Exception):  # no NVML library, no driver: try nvidia-smi
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    @property
    def source(self) -> str:
        return "NVML" if self.nvml else ("nvidia-smi" if self.smi else "none")

    def read(self) -> tuple[dict[int, float] | None, float | None]:
        """(MiB per pid using the GPU, or None where this machine does not say; MiB used on
        the device)."""
        if self.nvml:
            used = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / 2**20
            try:
                procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
            except self.nvml.NVMLError:  # a sandboxed driver may not list processes
                return None, used
            return {p.pid: (p.usedGpuMemory or 0) / 2**20 for p in procs}, used
        if self.smi:
            apps = subprocess.run(
                [self.smi, "--query-compute-apps=pid,used_memory",
                 "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10,
            ).stdout  # fmt: skip
            per = {}
            for line in apps.splitlines():
                pid, _, mib = line.partition(",")
                with contextlib.suppress(ValueError):
                    per[int(pid)] = float(mib)
            used = subprocess.run(
                [self.smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10,
            ).stdout.split()  # fmt: skip
            return per, float(used[0]) if used else None
        return {}, None


class ActorSampler(threading.Thread):
    """Samples, every ``period`` s while a simulation runs, each Ray actor's GPU memory and
    resident memory. An actor's last sample comes after its last call, when it waits idle for
    the simulation to end, so it is what an idle actor keeps between calls."""

    def __init__(self, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.gpu = GpuMemory()
        self.stop = threading.Event()
        self.actors: dict[int, dict[str, Any]] = {}
        self.device_used: list[float] = []
        self.unmatched: dict[int, float] = {}
        self.per_process = False  # whether any reading listed a process on the GPU

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                listed, used = self.gpu.read()
            except Exception:  # a failed reading is a gap in the series, not a failed check
                listed, used = None, None
            if used is not None:
                self.device_used.append(used)
            if listed:  # the driver's own context is listed once it works at all
                self.per_process = True
            per_pid = listed or {}
            seen = set()
            # This run's own: the local Ray's raylet is this process's child, its workers the
            # raylet's (another simulation on the machine has its own).
            for proc in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    # Ray renames a worker that hosts an actor after its class; Flower's is
                    # ClientAppActor.
                    if "ClientAppActor" not in " ".join(proc.cmdline()):
                        continue
                    pid = proc.pid
                    seen.add(pid)
                    a = self.actors.setdefault(pid, {"gpu": [], "rss": []})
                    a["rss"].append(proc.memory_info().rss / 2**20)
                    a["gpu"].append(per_pid.get(pid, 0.0))
            for pid, mib in per_pid.items():
                if pid not in seen and pid != os.getpid():
                    self.unmatched[pid] = max(self.unmatched.get(pid, 0.0), mib)
            self.stop.wait(self.period)

    def summary(self) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, float] | None:
            if not values:
                return None
            values = sorted(values)
            return {"min": values[0], "median": values[len(values) // 2], "max": values[-1]}

        # Trailing zeros are the actor's exit (its context gone before its process): the
        # reading before them is the idle one.
        idle_gpu = [next((v for v in reversed(a["gpu"]) if v > 0), 0.0)
                    for a in self.actors.values()]  # fmt: skip
        peak_gpu = [max(a["gpu"]) for a in self.actors.values()]
        return {
            "source": self.gpu.source,
            "per_process": self.per_process,
            "actors": len(self.actors),
            "actors_on_gpu": sum(1 for v in peak_gpu if v > 0),
            "idle_gpu_mib": stats(idle_gpu),
            "peak_gpu_mib": stats(peak_gpu),
            "idle_rss_mib": stats([a["rss"][-1] for a in self.actors.values()]),
            "device_used_mib": stats(self.device_used),
            "samples": max((len(a["gpu"]) for a in self.actors.values()), default=0),
            # pids NVML lists but psutil does not see (another pid namespace, as in a
            # sandbox): their memory is still each process's, just not tied to an actor
            "unmatched_gpu_mib": sorted(self.unmatched.values()),
        }


def actors(args: argparse.Namespace) -> dict[str, Any]:
    """A real Flower simulation whose client actors hold a GPU share: hidden learning on
    Fashion-MNIST, the supplier on CUDA, 50 data owners whose collect call (the official
    network's forward pass) runs on their actor's GPU share; 100 client calls in all."""
    gpu = cuda(args.device)
    clients = 50 if gpu else 4
    overrides = [
        f"deployment.clients={clients}",
        f"deployment.users={2000 if gpu else 200}",
        f"dataset.train_limit={6000 if gpu else 600}",
        "training.epochs=1",
        "role.robustness.sigmas=[0]",
        "role.robustness.injections=1",
        f"engine.device={args.device}",
        f"engine.num_gpus={0.1 if gpu else 0}",  # ten actors share the GPU
        f"engine.client_device={'cuda' if gpu else 'cpu'}",
    ]
    sampler = ActorSampler()
    sampler.start()
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as out:
            results = run_scenario("hidden_fmnist.yaml", overrides, Path(out))
    finally:
        sampler.stop.set()
        sampler.join()
    memory = sampler.summary()
    # A client that cannot reach its GPU fails its call, and the run goes on without it
    # (engine.on_client_failure: skip): count the replies, not the exit status.
    failures = results["metrics"]["deployment"]["failures"]
    if failures:
        raise RuntimeError(f"{len(failures)} client calls failed: {failures[0]}")
    if gpu and not driver_cuda_peak():
        raise RuntimeError("hidden_fmnist ran, but the supplier allocated nothing on the GPU")
    if gpu and memory["per_process"] and not memory["actors_on_gpu"]:
        if not memory["unmatched_gpu_mib"]:
            raise RuntimeError("no Ray actor was seen holding GPU memory: client_device unused")
    return {
        "scenario": "hidden_fmnist.yaml",
        "overrides": overrides,
        "client_calls": 2 * clients,
        "gpu_client_calls": clients,
        "wall_s": time.perf_counter() - start,
        "flower_s": results["timing_s"].get("flower simulation"),
        "driver_cuda_peak_mib": driver_cuda_peak(),
        "memory": memory,
    }


# -- decoders and the split-learning server on CUDA ------------------------------------------


def inversion(args: argparse.Namespace) -> dict[str, Any]:
    """Split learning (MNIST): the server's segment and the inversion decoder on the driver's
    device; sizes of tests/test_split_learning.py's SMALL run."""
    overrides = [
        "dataset.train_limit=1600", "training.epochs=1", "deployment.clients=2",
        "deployment.users=400", "role.aux_size=1500", "role.val_size=300",
        "role.decoder_epochs=4", "role.training_targets=200", "role.dcor_samples=320",
        f"engine.device={args.device}",
    ]  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        results = run_scenario("mnist_inversion.yaml", overrides, Path(out))
    peak = driver_cuda_peak()
    if cuda(args.device) and not peak:
        raise RuntimeError("mnist_inversion ran, but nothing was allocated on the GPU")
    return {"scenario": "mnist_inversion.yaml", "overrides": overrides,
            "wall_s": time.perf_counter() - start, "driver_cuda_peak_mib": peak,
            "timing_s": results["timing_s"]}  # fmt: skip


def probe_scenario(args: argparse.Namespace) -> dict[str, Any]:
    """Perturbation probing (MNIST): the signature decoders on the driver's device; sizes
    of tests/test_perturbation_probe.py's quick run."""
    overrides = [
        "role.directions=[random]", "role.num_directions=40", "role.aux_size=600",
        "role.decoder_epochs=8", "role.max_steps=20", "role.compare_defences=false",
        "deployment.clients=2", "deployment.users=60", f"engine.device={args.device}",
    ]  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        results = run_scenario("mnist_probe.yaml", overrides, Path(out))
    peak = driver_cuda_peak()
    if cuda(args.device) and not peak:
        raise RuntimeError("mnist_probe ran, but nothing was allocated on the GPU")
    return {"scenario": "mnist_probe.yaml", "overrides": overrides,
            "wall_s": time.perf_counter() - start, "driver_cuda_peak_mib": peak,
            "timing_s": results["timing_s"]}  # fmt: skip


# -- tests/test_scale.py's GPU test ----------------------------------------------------------


def gpu_test(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        # -n 0: pyproject's addopts start two xdist workers, pointless for one test
        cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
               f"--junitxml={junit}", PYTEST_GPU_TEST]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
        case = ET.parse(junit).getroot().find(".//testcase") if junit.exists() else None
    if case is None:
        raise RuntimeError(f"pytest exited {proc.returncode} without running {PYTEST_GPU_TEST}")
    outcome = "passed"
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            outcome = tag
    expected = "passed" if cuda(args.device) else "skipped"  # skipped without CUDA, by design
    if outcome != expected:
        raise RuntimeError(f"{PYTEST_GPU_TEST}: {outcome} (expected {expected})")
    return {"test": PYTEST_GPU_TEST, "outcome": outcome, "wall_s": wall,
            "test_s": float(case.get("time", "nan"))}  # fmt: skip


# -- speed: the Table 1 epoch and 4,000 probing signatures -----------------------------------


def table1(args: argparse.Namespace) -> dict[str, Any]:
    """One epoch of the four networks of one Table 1 experiment (C2-C10), as
    scripts/reproduce_hidden_learning.py trains it, on the full 54,000 training images on the
    GPU; the CPU of the same machine on a tenth, scaled (where the CPU run is too slow)."""
    import reproduce_hidden_learning as rhl
    import torch

    def job(device: str, limit: int | None, threads: int) -> dict[str, Any]:
        return {"dataset": "fashion_mnist", "experiment": "C2-C10", "seed": 0, "epochs": 1,
                "reweight": "named", "released": "logits", "train_limit": limit,
                "root": str(DATA), "device": device, "threads": threads, "sigmas": [0.0],
                "injections": 1}  # fmt: skip

    threads = os.cpu_count() or 1
    full = None if cuda(args.device) else 1000  # None: all 60,000, 54,000 after validation
    cpu_limit = 6000 if cuda(args.device) else 500
    rhl.run_one(job(args.device, 1000, threads))  # warm-up: CUDA context, cuDNN's choices
    measured = rhl.run_one(job(args.device, full, threads))
    if cuda(args.device):
        torch.cuda.synchronize()
    cpu = rhl.run_one(job("cpu", cpu_limit, threads))
    images = 54_000 if full is None else int(full * 0.9)
    return {
        "experiment": "C2-C10",
        "device_train_s": measured["train_seconds"],
        "device_images": images,
        "cpu_train_s": cpu["train_seconds"],
        "cpu_images": int(cpu_limit * 0.9),
        "cpu_threads": threads,
        "cpu_scaled_s": cpu["train_seconds"] * images / (cpu_limit * 0.9),
        "to_and_ts_official": measured["regimes"]["official"]["hidden"]["accuracy"],
    }


def signatures(args: argparse.Namespace) -> dict[str, Any]:
    """The adversary's signatures of its own images (role.aux_size, 4,000 by default): 100
    random directions, the shipped scenario's search settings, the served model of the shipped
    scenario (from data/splitsim-cache, else trained: 2 epochs on the CPU)."""
    import numpy as np
    import torch

    from splitsim.data.mnist import ATTACKER_TRAIN
    from splitsim.registry import DATASETS as REGISTRY
    from splitsim.roles.perturbation_probe.attack import directions, local_oracle, search
    from splitsim.roles.perturbation_probe.protocol import served_network
    from splitsim.roles.perturbation_probe.role import served_model
    from splitsim.scenario import load_scenario

    gpu = cuda(args.device)
    scenario = load_scenario(str(ROOT / "scenarios" / "mnist_probe.yaml"),
                             [f"dataset.root={DATA}"])  # fmt: skip
    p = scenario.role.params
    dataset = REGISTRY.get("mnist")(scenario.dataset.params, scenario.seed, None)
    model = served_model(lambda: served_network(scenario), *dataset.classifier_train(),
                         str(DATA), scenario.seed, p.served_epochs, lambda n=1: None)  # fmt: skip
    x_train, _ = dataset.images(train=True)
    n, n_cpu, n_dirs = (4000, 400, 100) if gpu else (100, 50, 20)
    x = x_train[ATTACKER_TRAIN[0] : ATTACKER_TRAIN[0] + n]
    dirs = directions("random", n_dirs, (1, 28, 28), scenario.seed)
    settings = {"eps_start": p.eps_start, "eps_max": p.eps_max, "tolerance": p.tolerance,
                "max_steps": p.max_steps}  # fmt: skip

    def timed(images: np.ndarray, device: str, batch: int) -> tuple[float, Any]:
        start = time.perf_counter()
        sig = search(local_oracle(model, images, dirs, batch=batch, device=device),
                     len(images), n_dirs, **settings)  # fmt: skip
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, sig

    timed(x[:50], args.device, 512)  # warm-up
    rows = []
    # 512 is the batch the CPU oracle was tuned to; a GPU wants far larger ones.
    for batch in (512, 8192) if gpu else (512,):
        seconds, sig = timed(x, args.device, batch)
        rows.append({"batch": batch, "seconds": seconds, "round_trips": sig.steps,
                     "queries_per_input": float(sig.queries.mean())})  # fmt: skip
    torch.set_num_threads(os.cpu_count() or 1)
    cpu_s, _ = timed(x[:n_cpu], "cpu", 512)
    return {"images": n, "directions": n_dirs, "device_runs": rows, "cpu_images": n_cpu,
            "cpu_s": cpu_s, "cpu_threads": torch.get_num_threads(),
            "cpu_scaled_s": cpu_s * n / n_cpu}  # fmt: skip


# -- report ----------------------------------------------------------------------------------


def _mib(stats: dict[str, float] | None) -> str:
    if not stats:
        return "n/a"
    return f"{stats['median']:,.0f} (min {stats['min']:,.0f}, max {stats['max']:,.0f})"


def read_status(work: Path) -> dict[str, dict[str, Any]]:
    """What gpu_check.sh recorded per step: exit status, seconds and its last output line."""
    status: dict[str, dict[str, Any]] = {}
    path = work / "status.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        step, rc, seconds, message = (line.split("\t", 3) + [""])[:4]
        status[step] = {"rc": int(rc), "seconds": float(seconds), "message": message}
    return status


def section(work: Path, device: str, command: str, total_s: float | None) -> tuple[str, bool]:
    """The GPU section's measured part, from the steps' JSON; and whether every step passed."""
    status = read_status(work)
    data = {s: json.loads((work / f"{s}.json").read_text()) for s in STEPS
            if (work / f"{s}.json").exists()}  # fmt: skip
    pre = data.get("preflight", {})
    ok = all(status.get(s, {}).get("rc") == 0 for s in STEPS) and len(data) == len(STEPS)
    lines = []
    if not cuda(device):
        lines.append("**Dry run on the CPU (`--device cpu`, tiny sizes): these are not GPU "
                     "figures.**\n")  # fmt: skip
    took = f", {total_s:.0f} s in all" if total_s is not None else ""
    lines.append(
        f"Measured {pre.get('date', '?')} on {pre.get('gpu', '?')}"
        + (f" ({pre['gpu_mib']:,} MiB, driver {pre.get('driver') or '?'})" if "gpu_mib" in pre
           else "")
        + f", {pre.get('cpus', '?')} CPU cores; torch {pre.get('torch', '?')} (CUDA "
        f"{pre.get('cuda') or '-'}), flwr {pre.get('flwr', '?')}, ray {pre.get('ray', '?')}, "
        f"Python {pre.get('python', '?')}. Command: `{command}`{took}."
    )  # fmt: skip
    lines += ["", "| GPU path | result | wall |", "|---|---|---|"]
    labels = {
        "preflight": "CUDA device, packages, datasets",
        "gpu_test": f"`{PYTEST_GPU_TEST}`",
        "actors": "Ray actors with `engine.num_gpus: 0.1`, `client_device: cuda`, supplier on "
        "CUDA (`hidden_fmnist.yaml`, 50 owners)",
        "inversion": "split server segment and inversion decoder on CUDA (`mnist_inversion.yaml`)",
        "probe_scenario": "signature decoder on CUDA (`mnist_probe.yaml`)",
        "table1": "Table 1 epoch (supplier, C2-C10)",
        "signatures": "4,000 probing signatures",
    }
    for step in STEPS:
        st = status.get(step, {})
        rc = st.get("rc")
        if rc is None:
            result = "not run"
        elif rc == 0:
            result = "passed"
        elif rc in (124, 137):  # timeout's own statuses: the step ran past its budget
            result = "timed out"
        else:
            result = f"FAILED (exit {rc}): {st.get('message', '')}"
        wall = f"{st['seconds']:.0f} s" if "seconds" in st else ""
        lines.append(f"| {labels[step]} | {result} | {wall} |")
    if "actors" in data:
        a = data["actors"]
        m = a["memory"]
        lines += [
            "",
            f"GPU memory of the Ray actors over {a['client_calls']} client calls "
            f"({a['gpu_client_calls']} of them on the GPU; read by {m['source']} every 0.25 s"
            f"{'' if m['per_process'] else ', which listed no processes here'}; "
            f"{m['actors']} actors, {m['actors_on_gpu']} seen on the GPU): an actor's last "
            "reading, taken after its last call while it waits idle, is what it keeps "
            "between calls.",
            "",
            "| per actor, MiB | median (min, max) |",
            "|---|---|",
            f"| GPU memory, idle after its calls | {_mib(m['idle_gpu_mib'])} |",
            f"| GPU memory, peak during calls | {_mib(m['peak_gpu_mib'])} |",
            f"| resident memory, idle | {_mib(m['idle_rss_mib'])} |",
            f"| whole device in use during the run | {_mib(m['device_used_mib'])} |",
        ]
        if m["unmatched_gpu_mib"]:
            lines.append(
                "\nGPU processes not matched to an actor's pid (another pid namespace): "
                + ", ".join(f"{v:,.0f}" for v in m["unmatched_gpu_mib"])
                + " MiB."
            )
        if a.get("driver_cuda_peak_mib"):
            lines.append(f"\nThe driver (supplier on CUDA) allocated at most "
                         f"{a['driver_cuda_peak_mib']:,.0f} MiB.")  # fmt: skip
    speed = []
    if "table1" in data:
        t = data["table1"]
        speed.append(
            f"| Table 1 epoch, four networks of C2-C10, {t['device_images']:,} images "
            f"| {t['device_train_s']:.1f} s | {t['cpu_scaled_s']:.1f} s ({t['cpu_train_s']:.1f} s "
            f"on {t['cpu_images']:,} images, {t['cpu_threads']} threads, scaled) "
            f"| {CPU_BOX_TABLE1_EPOCH_S} s |"
        )
    if "signatures" in data:
        s = data["signatures"]
        runs = ", ".join(f"{r['seconds']:.1f} s (batch {r['batch']:,})" for r in s["device_runs"])
        box = CPU_BOX_SIGNATURES_S_PER_1000 * s["images"] / 1000
        speed.append(
            f"| {s['images']:,} probing signatures, {s['directions']} random directions "
            f"| {runs} | {s['cpu_scaled_s']:.1f} s ({s['cpu_s']:.1f} s on {s['cpu_images']:,}, "
            f"{s['cpu_threads']} threads, scaled) | {box:.0f} s |"
        )
    if speed:
        lines += ["", "| workload | this device | this machine's CPU | 2-core CPU box (docs) |",
                  "|---|---|---|---|", *speed]  # fmt: skip
    return "\n".join(lines) + "\n", ok


def replace_section(docs: Path, body: str) -> None:
    """Swap what lies between the markers, atomically: a reader sees the old page or the new."""
    text = docs.read_text()
    head, sep, rest = text.partition(BEGIN)
    if not sep or END not in rest:
        raise SystemExit(f"{docs}: the markers {BEGIN!r} ... {END!r} are missing")
    tail = rest.split(END, 1)[1]
    fd, tmp = tempfile.mkstemp(dir=docs.parent, prefix=f".{docs.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(f"{head}{BEGIN}\n{body}{END}{tail}")
    os.chmod(tmp, 0o644)
    os.replace(tmp, docs)


def report(args: argparse.Namespace) -> int:
    work = Path(args.work)
    docs = Path(args.docs) if args.docs else None
    if docs is None:
        docs = DOCS if cuda(args.device) else work / "benchmarks.md"
        if not cuda(args.device):
            shutil.copy(DOCS, docs)  # a dry run leaves the real page alone
    body, ok = section(work, args.device, args.command, args.total_s)
    replace_section(docs, body)
    print(body)
    print(f"wrote {docs}")
    combined = {"status": read_status(work)}
    for step in STEPS:
        if (work / f"{step}.json").exists():
            combined[step] = json.loads((work / f"{step}.json").read_text())
    write_json(work / "gpu_check.json", combined)
    out = os.environ.get("OUT")
    # The device tool brings back only what lies under $OUT, at most 8 files: the page, the
    # figures in one JSON (gpu_check.sh adds its log).
    if out and Path(out).is_dir():
        shutil.copy(docs, Path(out) / "benchmarks.md")
        shutil.copy(work / "gpu_check.json", Path(out) / "gpu_check.json")
    return 0 if ok else 1


# -- pack ------------------------------------------------------------------------------------


def pack(args: argparse.Namespace) -> int:
    """Gzip the datasets and copy the small cache into .gpu_carry/ (git-ignored)."""
    from splitsim.data import fetch

    for name in DATASETS:
        if fetch.missing_files(DATA, name):
            raise SystemExit(f"{name} is not in {DATA}: run `python -m splitsim fetch {name}`")
        target = CARRY / fetch.FOLDERS[name] / "raw"
        target.mkdir(parents=True, exist_ok=True)
        for f in fetch.IDX_FILES:
            gz = target / f"{f}.gz"
            if gz.exists():
                continue
            part = gz.with_suffix(".part")
            with open(fetch.raw_folder(DATA, name) / f, "rb") as fin:
                with gzip.open(part, "wb", compresslevel=6) as fout:
                    shutil.copyfileobj(fin, fout)
            part.replace(gz)
    cache = DATA / "splitsim-cache"
    if cache.is_dir():
        (CARRY / "splitsim-cache").mkdir(exist_ok=True)
        for f in cache.glob("*.pt"):  # the served and reference classifiers: small, slow to train
            shutil.copy2(f, CARRY / "splitsim-cache" / f.name)
    size = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file())
    print(f'{CARRY}: {size / 2**20:.1f} MiB; carry it: run(carry=[".gpu_carry"], ...)')
    return 0


STEPS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "preflight": preflight,
    "gpu_test": gpu_test,
    "actors": actors,
    "inversion": inversion,
    "probe_scenario": probe_scenario,
    "table1": table1,
    "signatures": signatures,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("step", choices=[*STEPS, "report", "pack"])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "gpu_check"))
    parser.add_argument("--docs", default=None, help="page to write (report)")
    parser.add_argument("--command", default="bash scripts/gpu_check.sh", help="(report)")
    parser.add_argument("--total-s", type=float, default=None, help="(report)")
    args = parser.parse_args()
    if args.step == "pack":
        return pack(args)
    if args.step == "report":
        return report(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # scenarios name dataset.root relative to the checkout: data
    write_json(work / f"{args.step}.json", STEPS[args.step](args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
