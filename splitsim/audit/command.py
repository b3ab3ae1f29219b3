"""``python -m splitsim audit MODEL --data ... --sensitive ... --official ...``: read and check
every input (one line and exit 2 on a fault, before anything trains), audit, write the folder."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from splitsim.audit.data import AuditData
from splitsim.audit.model import build_architecture, load_model
from splitsim.audit.report import write
from splitsim.audit.run import audit
from splitsim.errors import ScenarioError

DEFAULT_REFERENCE = {False: "health_mlp", True: "lenet"}  # records, images


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _settings(items: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ScenarioError("command line", flag, f"{item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ScenarioError(
                "command line", f"{flag} {key}", f"{value!r} is not a value"
            ) from None
    return out


def load_data(args: argparse.Namespace) -> AuditData:
    path = Path(args.data)
    official, sensitive, side = _names(args.official), _names(args.sensitive), _names(args.side)
    if path.is_dir():
        if args.features:
            raise ScenarioError(str(path), "--features", "only for a CSV; images are the input")
        return AuditData.from_image_folder(path, official, sensitive, side)
    return AuditData.from_csv(path, official, sensitive, side, features=args.features or None)


def out_folder(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "audit" / f"{Path(args.model).stem}-{stamp}"


def run_audit(args: argparse.Namespace, console: Console) -> int:
    if args.references < 3:
        raise ScenarioError(
            "command line",
            "--references",
            f"{args.references}; at least 3 (their spread "
            "is part of the interval, and two give it one degree of freedom)",
        )
    if not 1 <= args.reference_epochs <= 10_000:
        raise ScenarioError(
            "command line", "--reference-epochs", f"{args.reference_epochs}; allowed: 1 to 10000"
        )
    data = load_data(args)
    input_shape = tuple(int(d) for d in data.x.shape[1:])
    arch_params = _settings(args.arch_set, "--arch-set")
    if arch_params and args.arch is None:
        raise ScenarioError("command line", "--arch-set", "only with --arch (a state dict)")
    try:
        model = load_model(args.model, args.arch, arch_params, input_shape)
    except ScenarioError as err:
        if "size mismatch" not in err.message or data.images:
            raise
        raise ScenarioError(
            err.source,
            err.field,
            f"{err.message}; the data gives {input_shape[0]} feature columns, chosen by --features",
        ) from None
    outputs = data.official.shape[1] if data.kind == "multilabel" else None
    ref_arch = args.reference or args.arch or DEFAULT_REFERENCE[data.images]
    ref_params = _settings(args.reference_set, "--reference-set")
    if not args.reference and args.arch and not ref_params:
        ref_params = arch_params
    if outputs is None:  # a multiclass model: as many outputs as the supplied one has
        import torch

        with torch.no_grad():
            outputs = int(model(torch.as_tensor(data.x[:1])).shape[-1])

    def reference() -> Any:
        return build_architecture(args.model, ref_arch, ref_params, input_shape, outputs)

    reference()  # a bad --reference fails here, before anything trains
    folder = out_folder(args)
    folder.mkdir(parents=True, exist_ok=True)
    with console.status("auditing") as status:
        result = audit(
            model,
            data,
            reference,
            release=args.release,
            seed=args.seed,
            references=args.references,
            reference_epochs=args.reference_epochs,
            progress=lambda text: status.update(text),
        )
    for cell in result["sensitive"].values():
        console.print(f"- {cell['sentence']}", highlight=False, markup=False)
    sup, ref = result["official"]["supplied"], result["official"]["reference"]
    console.print(
        f"official accuracy: supplied {100 * sup['accuracy']:.1f} %, honest reference "
        f"{100 * ref['accuracy']:.1f} %",
        highlight=False,
    )
    write(folder, result, args.model, args.data)
    console.print(f"report: {folder / 'report.md'}", highlight=False)
    return 0


def run_sample(args: argparse.Namespace, console: Console) -> int:
    from splitsim.audit import sample

    if not 1 <= args.n <= 1_000_000:
        raise ScenarioError("command line", "--n", f"{args.n}; allowed: 1 to 1000000")
    out = Path(args.out)
    if args.dataset == "covid_health_records":
        path = sample.covid_records(args.n, args.seed, out)
    else:
        path = sample.image_folder(
            args.dataset, args.n, args.seed, _names(args.tasks), args.root, out
        )
    console.print(f"{args.dataset}: {args.n} records in {path}", highlight=False)
    return 0
