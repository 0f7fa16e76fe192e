"""Views of a Table 4 result, for people: a compact Markdown table and a two-panel PNG (accuracy vs latency per
runtime and precision; the paper's own view, top-1 vs MACs). Every number is in `table4.json`; the views choose."""

from __future__ import annotations

import math
from pathlib import Path

from t2tedge import __version__
from t2tedge.results import Table4Cell, Table4Result

PRECISION_ORDER = ("fp32", "fp16", "w8", "int8")
MARKERS = {"fp32": "o", "fp16": "s", "w8": "D", "int8": "^"}


def _count(value: int | None, scale: float) -> str:
    return "" if value is None else f"{value / scale:.2f}"


def precisions_of(table: Table4Result) -> list[str]:
    """The precisions with at least one measured cell, in vocabulary order."""
    present = {c.precision for c in table.cells if c.measured}
    return [p for p in PRECISION_ORDER if p in present] + sorted(present - set(PRECISION_ORDER))


def markdown_columns(table: Table4Result) -> list[str]:
    return ["model", "runtime", "params (M)", "MACs (G)"] + [f"{p}: top-1 / agree / p50 ms" for p in precisions_of(table)]


def _cell_text(cell: Table4Cell | None) -> str:
    if cell is None or not cell.measured:
        return "-"
    agreement = "" if cell.top1_agreement is None else f"{100 * cell.top1_agreement:.1f}%"
    top1 = "" if cell.top1 is None else f"{100 * cell.top1:.2f}%"
    return f"{top1} / {agreement} / {cell.latency_b1.p50_ms:.2f}"


def markdown_rows(table: Table4Result) -> list[list[str]]:
    """One row per model and runtime with a measured cell: params, MACs, then top-1, agreement with the model's
    fp32 reference and batch-1 p50 for each precision."""
    rows = []
    precisions = precisions_of(table)
    pairs = list(dict.fromkeys((c.model, c.runtime) for c in table.cells if c.measured))
    for model, runtime in pairs:
        cells = {c.precision: c for c in table.cells if c.model == model and c.runtime == runtime and c.measured}
        any_cell = next(iter(cells.values()))
        rows.append([model, runtime, _count(any_cell.params, 1e6), _count(any_cell.macs, 1e9)]
                    + [_cell_text(cells.get(p)) for p in precisions])
    return rows


def skipped_lines(table: Table4Result) -> list[str]:
    """Each distinct reason a cell was not measured, with the cells it covers."""
    reasons: dict[str, list[str]] = {}
    for cell in table.cells:
        if not cell.measured:
            reasons.setdefault(cell.reason or "", []).append(f"{cell.model} {cell.runtime} {cell.precision}")
    return [f"- {reason} ({len(cells)} cell{'' if len(cells) == 1 else 's'}: {', '.join(cells[:3])}{', ...' if len(cells) > 3 else ''})"
            for reason, cells in reasons.items()]


def versions_note(table: Table4Result) -> str | None:
    """Which toolkit versions measured the cells, when any is not this toolkit's (a merge of older records)."""
    versions = sorted({c.version for c in table.cells if c.measured and c.version})
    if not versions or versions == [__version__]:
        return None
    return (f"Merged from toolkit versions {', '.join(versions)} (each cell's is in table4.json)"
            + ("" if __version__ in versions else f"; this toolkit is {__version__}"))


def render_markdown(table: Table4Result) -> str:
    machine = table.machine
    lines = ["# Table 4: lite T2T-ViT vs MobileNets, measured", ""]
    if machine:
        lines.append(f"Machine: {machine.cpu} ({machine.cores} cores), {machine.system}.")
    else:
        machines = list(dict.fromkeys(c.machine for c in table.cells if c.measured and c.machine))
        lines.append("Machines (each cell's is in table4.json): " + "; ".join(
            f"{m.cpu} ({m.cores} cores, host {m.hostname_hash})" for m in machines) + ".")
    folder, images = (table.data.folder, table.data.images) if table.data else (None, None)
    lines.append(f"Data: {folder} ({images} images). Each cell is the file `t2tedge export` writes for it, timed at "
                 "batch 1 (p50, ms); agreement is top-1 agreement with the model's fp32 reference. Every field, "
                 "the artifacts' names and sha256 included, is in table4.json.")
    versions = versions_note(table)
    if versions:
        lines.append(versions + ".")
    untrained = sorted({c.model for c in table.cells if c.measured and c.weights == "untrained"})
    if untrained:
        lines.append(f"Untrained (random weights, accuracy not comparable): {', '.join(untrained)}.")
    columns = markdown_columns(table)
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in markdown_rows(table)]
    skipped = skipped_lines(table)
    if skipped:
        lines += ["", "Not measured here:"] + skipped
    return "\n".join(lines) + "\n"


def parse_markdown_rows(text: str) -> list[list[str]]:
    rows = [line.strip().strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row] for row in rows[1:]]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both latency (lower) and accuracy (higher)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        if not any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def binomial_half_width(top1: float, images: int) -> float:
    """Half-width, in percentage points, of the 95% normal-approximation interval of a top-1 over `images`."""
    return 100 * 1.96 * math.sqrt(max(top1 * (1 - top1), 1e-12) / max(images, 1))


def place_labels(ax, points: list[tuple[float, float]], texts: list[str], fontsize: float = 7) -> None:
    """Annotate each point, nudging a label up (then down) in screen space until it overlaps no earlier one."""
    ax.figure.canvas.draw()
    transform = ax.transData
    placed: list[tuple[float, float, float, float]] = []
    pixels_per_point = ax.figure.dpi / 72
    height = 1.4 * fontsize * pixels_per_point
    for (x, y), text in sorted(zip(points, texts), key=lambda item: item[0]):
        px, py = transform.transform((x, y))
        width = 0.62 * fontsize * pixels_per_point * len(text)
        for step in [0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6]:
            box = (px + 5, py + 3 + step * height, px + 5 + width, py + 3 + step * height + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), xytext=(box[0] - px, box[1] - py), textcoords="offset pixels", fontsize=fontsize,
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if step else None)


def render_plot(table: Table4Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [c for c in table.cells if c.measured and c.top1 is not None]
    runtimes = list(dict.fromkeys(c.runtime for c in measured))
    colours = {r: plt.cm.tab10(i % 10) for i, r in enumerate(runtimes)}
    fig, (ax, paper_ax) = plt.subplots(1, 2, figsize=(14, 6), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    points = [(c.latency_b1.p50_ms, 100 * c.top1) for c in measured]
    for cell, (lat, acc) in zip(measured, points):
        trained = cell.weights == "trained"
        colour = colours[cell.runtime]
        ax.errorbar(lat, acc, yerr=binomial_half_width(cell.top1, cell.images or 0), fmt="none", ecolor=colour,
                    elinewidth=0.8, alpha=0.6, capsize=2)
        ax.scatter(lat, acc, s=60, marker=MARKERS.get(cell.precision, "o"), facecolors=colour if trained else "none",
                   edgecolors=colour, linewidths=1.4, zorder=3)
    models = list(dict.fromkeys(c.model for c in measured))
    if len(models) > 1:  # colour and marker name the runtime and precision; a label names the model
        place_labels(ax, points, [c.model for c in measured])
    trained_idx = [i for i, c in enumerate(measured) if c.weights == "trained"]
    front = [trained_idx[i] for i in pareto_front([points[i] for i in trained_idx])]
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=0.8,
                label="Pareto front (trained)")
    for runtime in runtimes:
        ax.scatter([], [], color=colours[runtime], label=runtime)
    for precision in precisions_of(table):
        ax.scatter([], [], color="grey", marker=MARKERS.get(precision, "o"), label=precision)
    if any(c.weights != "trained" for c in measured):
        ax.scatter([], [], facecolors="none", edgecolors="grey", label="untrained weights (hollow)")
    ax.set_xlabel("batch-1 latency, p50 (ms)")
    ax.set_ylabel("top-1 accuracy (%), 95% binomial interval")
    images = table.data.images if table.data else None
    subject = models[0] if len(models) == 1 else f"{len(models)} models"
    ax.set_title(f"{subject}: accuracy vs latency, {images} images — "
                 f"{table.machine.cpu if table.machine else 'merged machines'}", fontsize=10)
    ax.grid(alpha=0.3)
    if measured:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no cell measured", ha="center", va="center", transform=ax.transAxes)
    _paper_view(paper_ax, table)
    fig.tight_layout()
    from t2tedge.fileio import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _paper_view(ax, table: Table4Result) -> None:
    """The paper's Table 4 as reference points (top-1 vs MACs), with our fp32 reference cell of each model."""
    models = list(dict.fromkeys(c.model for c in table.cells))
    papers = {c.model: c.paper for c in table.cells if c.paper}
    xs = [papers[m]["macs_g"] for m in models if m in papers]
    ys = [papers[m]["top1"] for m in models if m in papers]
    ax.scatter(xs, ys, s=60, marker="*", color="0.4", label="paper, ImageNet (Table 4)", zorder=3)
    ours = {}
    for cell in table.cells:
        if cell.measured and cell.precision == "fp32" and cell.top1 is not None and cell.weights == "trained" \
                and cell.macs and cell.model not in ours:
            ours[cell.model] = cell
    suite = table.data.suite if table.data else None
    ax.scatter([c.macs / 1e9 for c in ours.values()], [100 * c.top1 for c in ours.values()], s=50, marker="o",
               color="tab:blue", label=f"measured here, fp32 ({suite or 'merged'})", zorder=3)
    labels = [(papers[m]["macs_g"], papers[m]["top1"], m) for m in models if m in papers]
    labels += [(c.macs / 1e9, 100 * c.top1, c.model) for c in ours.values()]
    if labels:
        place_labels(ax, [(x, y) for x, y, _ in labels], [m for _, _, m in labels])
    ax.set_xlabel("MACs (G)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("The paper's view: top-1 vs MACs" + (" (Imagenette is 10 classes: not the same scale)"
                                                        if suite == "imagenette" else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
