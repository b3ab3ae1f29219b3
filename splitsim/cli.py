"""``python -m splitsim run|attack|compare|list|fetch``: one scenario file, one command, one
folder."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from splitsim.errors import RunFailed, ScenarioError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _overrides(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=example
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m splitsim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one scenario and write runs/<scenario>/<timestamp>/")
    run.add_argument("scenario", help="path to a scenario YAML file")
    _overrides(
        run, "override a field, e.g. --set deployment.clients=1000 --set defences.0.scale=0.5"
    )
    run.add_argument(
        "--out", default=None, help="folder for runs (default: the scenario's output_dir)"
    )
    attack = sub.add_parser(
        "attack",
        help="attack a finished run again from what it recorded as received (no Flower run)",
    )
    attack.add_argument("folder", help="a finished run folder, runs/<scenario>/<timestamp>/")
    _overrides(attack, "change an attacker setting, e.g. --set role.decoder=deep")
    compare = sub.add_parser(
        "compare", help="run a defence x attacker-role matrix; resumes where it stopped"
    )
    compare.add_argument("matrix", help="path to a matrix YAML file")
    _overrides(compare, "override a matrix field, e.g. seeds=[0,1]")
    compare.add_argument(
        "--out", default=None, help="folder (default: <output_dir>/<matrix name>/)"
    )
    _audit_parser(sub)
    sample = sub.add_parser(
        "sample", help="write an auditor's records from a built-in dataset (CSV or image folder)"
    )
    sample.add_argument("dataset", choices=["covid_health_records", "fashion_mnist", "mnist"])
    sample.add_argument("--n", type=int, default=6000, help="records or images (default 6000)")
    sample.add_argument("--seed", type=int, default=1000)
    sample.add_argument("--tasks", default="C10",
                        help="images: papers/001 task columns, e.g. C2,C10")  # fmt: skip
    sample.add_argument("--root", default="data", help="images: dataset root")
    sample.add_argument("--out", required=True, help="records.csv, or a folder for images")
    sub.add_parser("list", help="name the roles, defences, datasets and models that exist")
    fetch = sub.add_parser("fetch", help="install real datasets offline (idempotent)")
    fetch.add_argument("names", nargs="+", choices=["fashion_mnist", "mnist"])
    fetch.add_argument("--root", default="data", help="dataset root (default: data)")
    return parser


def _audit_parser(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser(
        "audit",
        help="does a supplied model release more about a sensitive attribute than an honest one?",
        description="Train honest reference networks on your records, decode each sensitive "
        "attribute from what the supplied model and the references release, and report the "
        "excess with a 95 %% interval (docs/audit.md).",
    )
    audit.add_argument("model", metavar="MODEL",
                       help="a TorchScript file, or a state dict with --arch")  # fmt: skip
    audit.add_argument("--data", required=True,
                       help="records.csv, or a folder of images with labels.csv")  # fmt: skip
    audit.add_argument("--sensitive", required=True, help="columns to audit, e.g. cv_risk,insurer")
    audit.add_argument("--official", required=True,
                       help="the official label column(s) the model's outputs index")  # fmt: skip
    audit.add_argument("--side", default="",
                       help="fields sent in clear beside the scores, e.g. region")  # fmt: skip
    audit.add_argument("--features", default="",
                       help="CSV: the model's input columns, in order, or a prefix such as "
                       "'in_*' (default: every column not named by another flag)")  # fmt: skip
    audit.add_argument("--arch", default=None, help="registered architecture of a state dict")
    audit.add_argument("--arch-set", action="append", default=[], metavar="KEY=VALUE",
                       help="an architecture parameter, e.g. hidden=[32,32]")  # fmt: skip
    audit.add_argument("--reference", default=None,
                       help="architecture of the honest reference (default: --arch, else "
                       "health_mlp for records and lenet for images)")  # fmt: skip
    audit.add_argument("--reference-set", action="append", default=[], metavar="KEY=VALUE")
    audit.add_argument("--release", choices=["probabilities", "logits"], default="probabilities",
                       help="what the deployment sends (default: probabilities)")  # fmt: skip
    audit.add_argument("--references", type=int, default=5, help="honest references (>= 3)")
    audit.add_argument("--reference-epochs", type=int, default=30,
                       help="epochs of each reference (best held-out epoch kept)")  # fmt: skip
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--out", default=None, help="report folder (default: runs/audit/<stamp>/)")


def cmd_list(console: Console) -> int:
    from splitsim.registry import BUILT_IN, DATASETS, DEFENCES, MODELS, ROLES, describe

    console.print("built in unless marked [distribution version] (entry points: docs/plugins.md)",
                  markup=False, highlight=False)  # fmt: skip
    for registry in (ROLES, DEFENCES, DATASETS, MODELS):
        console.print(f"[bold]{registry.kind}s[/bold]")
        for name, obj in registry.items():
            origin = registry.origin(name)
            where = "" if origin == BUILT_IN else f"[{origin}] "
            console.print(
                f"  {name:<24} {where}{describe(obj)}",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )
    return EXIT_OK


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from splitsim import api

    api.run(args.scenario, args.overrides, out=args.out, console=console, _out_field="--out")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from splitsim import api

    api.compare(args.matrix, args.overrides, out=args.out, console=console, _out_field="--out")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from splitsim.engine.simulation import telemetry_defaults

    telemetry_defaults()  # before any Flower or Ray process starts
    console = Console(stderr=False)
    try:
        if args.command == "list":
            return cmd_list(console)
        if args.command == "fetch":
            from splitsim.data.fetch import fetch

            for name in args.names:
                console.print(f"{name}: {fetch(args.root, name)}")
            return EXIT_OK
        if args.command == "compare":
            return cmd_compare(args, console)
        if args.command == "sample":
            from splitsim.audit.command import run_sample

            return run_sample(args, console)
        if args.command == "audit":
            from splitsim.audit.command import run_audit

            return run_audit(args, console)
        if args.command == "attack":
            from splitsim import api

            api.attack(args.folder, args.overrides, console=console)
            return EXIT_OK
        return cmd_run(args, console)
    except ScenarioError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as err:
        console.print(f"[red]{err}[/red]", highlight=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if args.command == "compare":
            print(
                "interrupted; finished cells are kept and the same command reads them back",
                file=sys.stderr,
            )
        else:
            print("interrupted; the unfinished run folder is marked .failed", file=sys.stderr)
        return 130
