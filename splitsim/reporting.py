"""What a finished run leaves behind: results.json and metrics.csv for every role, then the
role's own report (report.md, plots) from ``splitsim/roles/<role>/report.py``."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from splitsim.runs import write_atomic, write_json


def flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        rows: list[tuple[str, Any]] = []
        for key in sorted(data):
            rows += flatten(data[key], f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(data, list):
        return [(prefix, ";".join(str(v) for v in data))]
    return [(prefix, data)]


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, imported when a report first draws: every Flower
    actor and compare cell imports the role packages, and none of them draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG atomically (a reader never sees half a picture)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def image_grid(
    rows: list[tuple[str, Any]], path: Path, title: str, *, cell: tuple[float, float] = (1.1, 1.25),
    margin: float = 0.0, label_size: int = 7, wrap: int | None = None, dpi: int = 120,
) -> None:  # fmt: skip
    """Rows of 28x28 grey images, each row labelled on its left (originals above
    reconstructions, as the papers show them), written atomically to ``path``."""
    import textwrap

    import numpy as np

    plt = pyplot()
    rows = [(label, images) for label, images in rows if len(images)]
    if not rows:  # nothing reached the attacker: say so rather than draw an empty grid
        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no images to show", ha="center", va="center")
        fig.suptitle(title, fontsize=9)
        save_figure(fig, path, dpi=dpi)
        return
    cols = max(len(images) for _, images in rows)
    size = (cell[0] * cols + margin, cell[1] * len(rows))
    fig, axes = plt.subplots(len(rows), cols, figsize=size, squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(np.asarray(images[c]).reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            elif c > 0:  # a shorter row: no empty frames where it has no image
                ax.axis("off")
            if c == 0:
                text = label if wrap is None else textwrap.fill(label, wrap)
                ax.set_ylabel(text, fontsize=label_size, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)


def pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def defences_text(results: dict) -> str:
    """The run's defences in one line, ``name(param=value, ...)``, or ``none``."""
    specs = results["defences"]
    if not specs:
        return "none"
    return ", ".join(
        spec["name"] + "(" + ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name") + ")"
        for spec in specs
    )


def wire_section(wire: dict) -> str:
    """report.md's last section, the same for every role: what crossed the trust boundary."""
    return (
        "## What crossed the boundary\n\n"
        f"{wire['messages']} messages; {wire['bytes_to_clients']} bytes to clients, "
        f"{wire['bytes_from_clients']} bytes from clients. Records sent by clients: "
        + ", ".join(f"`{r}`" for r in wire["client_records"])
        + " (see `wire.jsonl`).\n"
    )


def class_counts_section(
    counts: dict[str, list[int]], partitioner: dict | None, what: str, classes: list[str]
) -> str:
    """The owners' training examples per class under the partitioner, as a markdown table;
    ``what`` names the examples and the owners (``"owners' training images per digit"``)."""
    part = partitioner or {"name": "iid"}
    shown = {"dirichlet": ("alpha", "min_size"), "shards": ("shards_per_owner",)}
    how = ", ".join(f"{k} {part[k]}" for k in shown.get(part["name"], ()))
    label = part["name"] + (f": {how}" if how else "")
    header = "| owner | " + " | ".join(classes) + " | total |"
    lines = [f"## The {what} ({label})", "", header, "|---" * (len(classes) + 2) + "|"]
    for owner, row in counts.items():
        lines.append(f"| {owner} | " + " | ".join(str(n) for n in row) + f" | {sum(row)} |")
    return "\n".join(lines) + "\n\n"


def write(folder: Path, scenario_name: str, results: dict, plots: dict, role: Any) -> None:
    write_json(folder / "results.json", results)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["metric", "value"])
    writer.writerows(flatten(results["metrics"]))
    write_atomic(folder / "metrics.csv", buffer.getvalue())
    role.report.write(folder, scenario_name, results, plots)
    report = folder / "report.md"
    text = report.read_text() if report.exists() else None
    section = privacy_section(results["metrics"])
    if section:
        text = (text or "").rstrip("\n") + "\n\n" + section
        write_atomic(report, text)
    if text is not None:
        write_atomic(folder / "report.html", html_page(text, folder, scenario_name))


PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
    "img{max-width:100%} code{background:#f4f4f4;padding:0 3px}"
)


def html_page(markdown_text: str, folder: Path, title: str) -> str:
    """``report.md`` as one self-contained page: the Markdown rendered by Python-Markdown
    (tables extension; raw HTML in it shown as text), each picture of the run folder inlined
    as a data URI; no script, no stylesheet or font from elsewhere, so it opens offline and
    can be mailed as one file. A picture that is not a file in the run folder is dropped, not
    fetched."""
    import base64
    import html
    import re

    import markdown

    # Markdown passes raw HTML through, and a report quotes the scenario (its name, defence
    # labels): a "<script>" there stays text on the page.
    body = markdown.markdown(markdown_text.replace("<", "&lt;"), extensions=["tables"])

    def inline(match: re.Match) -> str:
        name = html.unescape(match.group(1))
        path = (folder / name).resolve()
        if path.parent != folder.resolve() or path.suffix != ".png" or not path.is_file():
            return 'src=""'
        return 'src="data:image/png;base64,' + base64.b64encode(path.read_bytes()).decode() + '"'

    body = re.sub(r'src="([^"]*)"', inline, body)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>splitsim: {html.escape(title)}</title><style>{PAGE_STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def privacy_section(metrics: dict) -> str:
    """``report.md``'s privacy budgets: the run's (``metrics.privacy``) and, for a role that
    compares passes, each pass's (``metrics.sessions[i].privacy``)."""
    from splitsim.defences.privacy import describe

    groups = [("", metrics.get("privacy") or [])]
    for row in metrics.get("sessions") or []:
        if isinstance(row, dict) and row.get("privacy"):
            label = " / ".join(str(row[k]) for k in ("directions", "defences") if k in row)
            groups.append((label, row["privacy"]))
    lines = [f"- {label + ': ' if label else ''}{describe(r)}" for label, rows in groups
             for r in rows]  # fmt: skip
    if not lines:
        return ""
    return (
        "## Privacy budget\n\nEpsilon of each noise defence per release and over all of a "
        "record's releases in this run (splitsim/defences/privacy.py):\n\n"
        + "\n".join(lines)
        + "\n"
    )
