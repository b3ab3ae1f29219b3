"""The comparison's outputs: ``matrix.csv`` (one row per cell), ``heatmap.png``, one
privacy-utility plot per role with its Pareto front, ``report.md`` and a self-contained
``report.html`` (pictures inlined, no server, no script)."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from splitsim.defences.privacy import epsilon_text
from splitsim.matrix.score import defence_score, pareto_front, vflair_dcs
from splitsim.matrix.spec import Cell, Matrix
from splitsim.reporting import pyplot, save_figure
from splitsim.runs import write_atomic

COLUMNS = [
    "role", "defence", "parameters", "attacker", "seed", "status", "utility_metric", "utility",
    "utility_chance", "leakage_metric", "leakage", "leakage_chance", "other_leakage",
    "leakage_removed", "utility_kept", "defence_score", "vflair_dcs", "epsilon", "wall_s",
    "cell", "note",
]  # fmt: skip
ATTACKER_STYLE = {"non_adaptive": ("o", "tab:blue"), "adaptive": ("^", "tab:red")}


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def rows(matrix: Matrix, cells: list[Cell], records: dict[str, dict]) -> list[dict]:
    """One row per cell, with its defence score against the same role/attacker/seed undefended."""
    baseline: dict[tuple, dict] = {}
    for cell in cells:
        record = records.get(cell.id)
        if cell.params == "-" and record and record.get("status") == "ok":
            baseline[(cell.shown, cell.attacker, cell.seed)] = record["summary"]
    out = []
    for cell in cells:
        row: dict = {c: "" for c in COLUMNS}
        row |= {
            "role": cell.shown,
            "defence": cell.defence,
            "parameters": cell.params,
            "attacker": cell.attacker,
            "seed": cell.seed,
            "cell": cell.id,
        }
        record = records.get(cell.id)
        if cell.scenario is None:
            row |= {"status": "n/a", "note": cell.reason}
        elif record is None:
            row |= {"status": "not run", "note": "interrupted before this cell finished"}
        elif record["status"] != "ok":
            row |= {
                "status": "failed",
                "note": record.get("error", ""),
                "wall_s": record.get("wall_s"),
            }
        else:
            s = record["summary"]
            head, *others = s["leakage"]
            row |= {
                "status": "ok",
                "utility_metric": s["utility"]["name"],
                "utility": s["utility"]["value"],
                "utility_chance": s["utility"]["chance"],
                "leakage_metric": head["name"],
                "leakage": head["value"],
                "leakage_chance": head["chance"],
                "other_leakage": "; ".join(f"{o['name']}={o['value']:.4g}" for o in others),
                "epsilon": record.get("epsilon", ""),
                "wall_s": record.get("wall_s"),
            }
            base = baseline.get((cell.shown, cell.attacker, cell.seed))
            if base is None:
                row["note"] = "no undefended cell to score against"
            else:
                score = defence_score(
                    s["utility"]["value"], base["utility"]["value"], s["utility"]["chance"],
                    head["value"], base["leakage"][0]["value"], head["chance"], matrix.beta,
                )  # fmt: skip
                row |= {
                    "leakage_removed": score["removed"],
                    "utility_kept": score["kept"],
                    "defence_score": score["score"],
                    "vflair_dcs": vflair_dcs(
                        head["value"], s["utility"]["value"], base["utility"]["value"]
                    ),  # fmt: skip
                }
        out.append(row)
    return out


def csv_text(table: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: _num(v) if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def _mean(values: list) -> float | None:
    values = [v for v in values if isinstance(v, float | int) and v != ""]
    return float(statistics.fmean(values)) if values else None


def _sd(values: list) -> float | None:
    values = [v for v in values if isinstance(v, float | int)]
    return float(statistics.stdev(values)) if len(values) > 1 else None


def _epsilon(values: list[str]) -> float | None:
    """The largest epsilon over a group's seeds (cells give it as text; blank: none)."""
    numbers = [float(v) for v in values if v != ""]
    return max(numbers) if numbers else None


def aggregate(table: list[dict]) -> list[dict]:
    """Seeds averaged: one entry per (role, defence, attacker), in matrix order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in table:
        groups[(row["role"], row["defence"], row["attacker"])].append(row)
    out = []
    for (role, defence, attacker), members in groups.items():
        ok = [r for r in members if r["status"] == "ok"]
        statuses = {r["status"] for r in members}
        status = "ok" if ok else ("n/a" if statuses == {"n/a"} else sorted(statuses)[0])
        out.append(
            {
                "role": role,
                "defence": defence,
                "parameters": members[0]["parameters"],
                "attacker": attacker,
                "status": status,
                "seeds": len(ok),
                "note": next((r["note"] for r in members if r["note"]), ""),
                "utility_metric": ok[0]["utility_metric"] if ok else "",
                "leakage_metric": ok[0]["leakage_metric"] if ok else "",
                "utility": _mean([r["utility"] for r in ok]),
                "utility_sd": _sd([r["utility"] for r in ok]),
                "leakage": _mean([r["leakage"] for r in ok]),
                "leakage_sd": _sd([r["leakage"] for r in ok]),
                "removed": _mean([r["leakage_removed"] for r in ok]),
                "score": _mean([r["defence_score"] for r in ok]),
                "score_sd": _sd([r["defence_score"] for r in ok]),
                "vflair": _mean([r["vflair_dcs"] for r in ok]),
                "epsilon": _epsilon([r.get("epsilon", "") for r in ok]),
            }
        )
    return out


def _fmt(value: float | None, sd: float | None = None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def heatmap(groups: list[dict], path: Path) -> None:
    plt = pyplot()
    defences = list(dict.fromkeys(g["defence"] for g in groups))
    columns = list(dict.fromkeys((g["role"], g["attacker"]) for g in groups))
    grid = np.full((len(defences), len(columns)), np.nan)
    fig, ax = plt.subplots(figsize=(2.0 + 1.9 * len(columns), 1.2 + 0.5 * len(defences)))
    lookup = {(g["defence"], g["role"], g["attacker"]): g for g in groups}
    for i, d in enumerate(defences):
        for j, (role, attacker) in enumerate(columns):
            g = lookup.get((d, role, attacker))
            if g and g["removed"] is not None:
                grid[i, j] = 1.0 - g["removed"]
    image = ax.imshow(grid, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    for i, d in enumerate(defences):
        for j, (role, attacker) in enumerate(columns):
            g = lookup.get((d, role, attacker))
            if g is None:
                continue
            if g["status"] != "ok":
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.85", hatch="//"))
                text = g["status"]
            else:
                text = _fmt(g["leakage"], digits=2)
            dark = np.isfinite(grid[i, j]) and grid[i, j] > 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")  # fmt: skip
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([f"{r}\n{a.replace('_', '-')}" for r, a in columns], fontsize=8)
    ax.set_yticks(range(len(defences)))
    ax.set_yticklabels(defences, fontsize=8)
    ax.set_title("Leakage remaining (1: as undefended, 0: chance); text: headline leakage")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    save_figure(fig, path)


def privacy_utility(groups: list[dict], role: str, path: Path) -> None:
    plt = pyplot()
    mine = [g for g in groups if g["role"] == role and g["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for attacker, (marker, colour) in ATTACKER_STYLE.items():
        points = [g for g in mine if g["attacker"] == attacker]
        if not points:
            continue
        xy = [(g["leakage"], g["utility"]) for g in points]
        ax.scatter(*zip(*xy, strict=True), marker=marker, color=colour,
                   label=attacker.replace("_", "-") + " attacker")  # fmt: skip
        for g, (x, y) in zip(points, xy, strict=True):
            ax.annotate(g["defence"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = [xy[i] for i in pareto_front(xy)]
        ax.step(*zip(*front, strict=True), where="post", color=colour, alpha=0.6, linestyle="--",
                label=f"Pareto front ({attacker.replace('_', '-')})")  # fmt: skip
    if mine:
        ax.set_xlabel(f"{mine[0]['leakage_metric']} (leakage, lower is better)")
        ax.set_ylabel(f"{mine[0]['utility_metric']} (utility)")
    ax.set_title(f"{role}: privacy-utility trade-off")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def leakage_epsilon(groups: list[dict], role: str, path: Path) -> None:
    """Leakage against each defence's epsilon (log scale); unbounded budgets at the right
    edge, the undefended leakage as a line."""
    plt = pyplot()
    mine = [g for g in groups if g["role"] == role and g["status"] == "ok"]
    finite = [
        g["epsilon"] for g in mine if g["epsilon"] is not None and math.isfinite(g["epsilon"])
    ]
    edge = 10 * max(finite) if finite else 10.0
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for attacker, (marker, colour) in ATTACKER_STYLE.items():
        points = [g for g in mine if g["attacker"] == attacker and g["epsilon"] is not None]
        for i, g in enumerate(points):
            x = g["epsilon"] if math.isfinite(g["epsilon"]) else edge
            ax.scatter([max(x, 1e-3)], [g["leakage"]], marker=marker, color=colour,
                       label=None if i else attacker.replace("_", "-") + " attacker")  # fmt: skip
            ax.annotate(g["defence"], (max(x, 1e-3), g["leakage"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        base = next((g for g in mine if g["attacker"] == attacker and g["defence"] == "none"), None)
        if base is not None:
            ax.axhline(base["leakage"], color=colour, linestyle=":", alpha=0.7,
                       label=f"undefended ({attacker.replace('_', '-')})")  # fmt: skip
    ax.axvline(edge, color="0.6", linewidth=0.8)
    ax.text(edge, ax.get_ylim()[1], " unbounded", fontsize=7, va="top", color="0.4")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon over the run (the record that spent most; log scale; 0 at 0.001)")
    if mine:
        ax.set_ylabel(f"{mine[0]['leakage_metric']} (leakage)")
    ax.set_title(f"{role}: leakage against the privacy budget")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _ranking(groups: list[dict], role: str, attacker: str) -> list[dict]:
    mine = [g for g in groups if g["role"] == role and g["attacker"] == attacker]
    ok = sorted(
        (g for g in mine if g["status"] == "ok"),
        key=lambda g: -(g["score"] if g["score"] is not None else -1),
    )
    return ok + [g for g in mine if g["status"] != "ok"]


def _naive_only(groups: list[dict]) -> list[str]:
    """Defences that remove much more leakage against the naive attacker than the adaptive."""
    lookup = {(g["role"], g["defence"], g["attacker"]): g for g in groups}
    out = []
    for g in groups:
        if g["attacker"] != "non_adaptive" or g["removed"] is None:
            continue
        other = lookup.get((g["role"], g["defence"], "adaptive"))
        if other and other["removed"] is not None and g["removed"] - other["removed"] > 0.2:
            out.append(
                f"{g['role']}, {g['defence']}: removes {100 * g['removed']:.0f}% of the leak "
                f"against the non-adaptive attacker, {100 * other['removed']:.0f}% against the "
                "adaptive one"
            )
    return out


def _table_rows(groups: list[dict], role: str, attacker: str) -> list[list[str]]:
    out = []
    for rank, g in enumerate(_ranking(groups, role, attacker), start=1):
        ok = g["status"] == "ok"
        out.append(
            [
                str(rank) if ok and g["score"] is not None else "",
                g["defence"],
                g["parameters"],
                _fmt(g["utility"], g["utility_sd"]) if ok else g["status"],
                _fmt(g["leakage"], g["leakage_sd"]) if ok else g["status"],
                _fmt(g["removed"], digits=2) if ok else "",
                _fmt(g["score"], g["score_sd"]) if ok else "",
                _fmt(g["vflair"]) if ok else "",
                epsilon_text(g["epsilon"]) if ok else "",
                "" if ok else g["note"],
            ]
        )
    return out


HEAD = ["rank", "defence", "parameters", "utility", "leakage", "removed", "defence score",
        "VFLAIR DCS", "epsilon", "note"]  # fmt: skip


def markdown(matrix: Matrix, groups: list[dict], pictures: dict[str, str]) -> str:
    lines = [
        f"# Defence comparison: {matrix.name}",
        "",
        matrix.description.strip(),
        "",
        f"Seeds: {', '.join(map(str, matrix.seeds))}. Defence score (docs/compare.md): "
        f"1 - sqrt(beta (1 - removed)^2 + (1 - beta)(1 - kept)^2), beta = {matrix.beta}; "
        "removed: share of the undefended attack's advantage over chance that the defence "
        "removes; kept: share of the task's advantage over chance kept. Doing nothing scores "
        f"{1 - matrix.beta**0.5:.2f}.",
        "",
        f"![heat map]({pictures['heatmap']})",
        "",
    ]
    warnings = _naive_only(groups)
    if warnings:
        lines += ["## Defences that only hold against a naive attacker", ""]
        lines += [f"- {w}" for w in warnings] + [""]
    for role in dict.fromkeys(g["role"] for g in groups):
        any_ok = next((g for g in groups if g["role"] == role and g["status"] == "ok"), None)
        lines += [f"## {role}", ""]
        if any_ok:
            lines += [
                f"Utility: {any_ok['utility_metric']}; leakage: {any_ok['leakage_metric']}.",
                "",
                f"![privacy-utility]({pictures[role]})",
                "",
            ]
        if f"epsilon {role}" in pictures:
            lines += [f"![leakage against epsilon]({pictures[f'epsilon {role}']})", ""]
        for attacker in dict.fromkeys(g["attacker"] for g in groups if g["role"] == role):
            lines += [f"### {attacker.replace('_', '-')} attacker", ""]
            lines += ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
            lines += ["| " + " | ".join(r) + " |" for r in _table_rows(groups, role, attacker)]
            lines.append("")
    return "\n".join(lines)


def _inline(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def html_page(matrix: Matrix, groups: list[dict], folder: Path, pictures: dict[str, str]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>splitsim: {e(matrix.name)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}",
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}",
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}",
        "td.na{color:#777;font-style:italic} img{max-width:100%}",
        "</style></head><body>",
        f"<h1>Defence comparison: {e(matrix.name)}</h1><p>{e(matrix.description.strip())}</p>",
        f"<p>Seeds {e(', '.join(map(str, matrix.seeds)))}; defence score = 1 - sqrt(beta "
        f"(1 - removed)<sup>2</sup> + (1 - beta)(1 - kept)<sup>2</sup>), beta = {matrix.beta} "
        "(docs/compare.md). Grey cells: the defence does not apply (n/a, reason in the tables) "
        "or the cell failed.</p>",
        f"<h2>Leakage per role and defence</h2><img id='heatmap' alt='heat map' "
        f"src='{_inline(folder / pictures['heatmap'])}'>",
    ]
    warnings = _naive_only(groups)
    if warnings:
        parts.append("<h2>Defences that only hold against a naive attacker</h2><ul>")
        parts += [f"<li>{e(w)}</li>" for w in warnings]
        parts.append("</ul>")
    for role in dict.fromkeys(g["role"] for g in groups):
        parts.append(f"<h2>{e(role)}</h2>")
        if role in pictures:
            parts.append(
                f"<img class='pareto' alt='privacy-utility {e(role)}' "
                f"src='{_inline(folder / pictures[role])}'>"
            )
        if f"epsilon {role}" in pictures:
            parts.append(
                f"<img class='epsilon' alt='leakage against epsilon {e(role)}' "
                f"src='{_inline(folder / pictures[f'epsilon {role}'])}'>"
            )
        for attacker in dict.fromkeys(g["attacker"] for g in groups if g["role"] == role):
            parts.append(f"<h3>{e(attacker.replace('_', '-'))} attacker</h3><table><tr>")
            parts += [f"<th>{e(h)}</th>" for h in HEAD]
            parts.append("</tr>")
            for r in _table_rows(groups, role, attacker):
                na = " class='na'" if r[-1] else ""
                parts.append(f"<tr{na}>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(folder: Path, matrix: Matrix, cells: list[Cell], records: dict[str, dict]) -> list[dict]:
    table = rows(matrix, cells, records)
    write_atomic(folder / "matrix.csv", csv_text(table))
    groups = aggregate(table)
    pictures = {"heatmap": "heatmap.png"}
    heatmap(groups, folder / "heatmap.png")
    for role in dict.fromkeys(g["role"] for g in groups):
        # a labelled entry ("model_inversion (intercepting owner)") names a file without spaces
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", role).strip("_")
        if any(g["role"] == role and g["status"] == "ok" for g in groups):
            pictures[role] = f"privacy_utility_{name}.png"
            privacy_utility(groups, role, folder / pictures[role])
        if any(g["role"] == role and g["status"] == "ok" and g["epsilon"] is not None
               for g in groups):  # fmt: skip
            pictures[f"epsilon {role}"] = f"leakage_epsilon_{name}.png"
            leakage_epsilon(groups, role, folder / pictures[f"epsilon {role}"])
    write_atomic(folder / "report.md", markdown(matrix, groups, pictures))
    write_atomic(folder / "report.html", html_page(matrix, groups, folder, pictures))
    return table
