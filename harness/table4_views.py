"""Views of a Table 4 result: a Markdown table and an accuracy-vs-latency plot with the Pareto front."""

from __future__ import annotations

from pathlib import Path

from t2tedge.results import Table4Cell, Table4Result

COLUMNS = ["model", "runtime", "precision", "weights", "top-1", "top-5", "Δ top-1", "agree", "params (M)", "MACs (G)",
           "size (MB)", "lat min", "p50", "p90", "p99", "mean (ms)", "b8 img/s", "threads",
           "paper top-1", "paper params", "paper MACs"]


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _count(value: int | None, scale: float) -> str:
    return "" if value is None else f"{value / scale:.2f}"


def cell_row(cell: Table4Cell) -> list[str]:
    paper = cell.paper or {}
    head = [cell.model, cell.runtime, cell.precision, cell.weights]
    refs = [str(paper.get("top1", "")), str(paper.get("params_m", "")), str(paper.get("macs_g", ""))]
    if not cell.measured:
        return head + [f"skipped: {cell.reason or ''}"] + [""] * (len(COLUMNS) - len(head) - 1 - 3) + refs
    lat = cell.latency_b1
    delta = cell.delta_top1
    return head + [
        _pct(cell.top1), _pct(cell.top5), "" if delta is None else f"{100 * delta:+.2f}",
        _pct(cell.top1_agreement), _count(cell.params, 1e6), _count(cell.macs, 1e9),
        f"{cell.artifact_bytes / 1e6:.1f}", f"{lat.min_ms:.2f}", f"{lat.p50_ms:.2f}", f"{lat.p90_ms:.2f}",
        f"{lat.p99_ms:.2f}", f"{lat.mean_ms:.2f}", f"{cell.throughput_b8_ips:.1f}",
        str((cell.runtime_info or {}).get("threads", "")),
    ] + refs


def render_markdown(table: Table4Result) -> str:
    machine = table.machine
    lines = ["# Table 4: lite T2T-ViT vs MobileNets, measured", ""]
    if machine:
        lines.append(f"Machine: {machine.cpu} ({machine.cores} cores), {machine.system}. ")
    folder, images = (table.data.folder, table.data.images) if table.data else (None, None)
    lines.append(f"Data: {folder} ({images} images). Latency at batch 1: warm-up then a fixed "
                 "count, milliseconds. `untrained` rows use random weights: their accuracy is not comparable.")
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell_row(c)) + " |" for c in table.cells]
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


def render_plot(table: Table4Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [c for c in table.cells if c.measured and c.top1 is not None]
    families = sorted({c.family or "" for c in measured})
    colours = {f: plt.cm.tab10(i) for i, f in enumerate(families)}
    markers = {"fp32": "o", "fp16": "s", "int8": "^"}
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    points = [(c.latency_b1.p50_ms, 100 * c.top1) for c in measured]
    for cell, (lat, acc) in zip(measured, points):
        trained = cell.weights == "trained"
        colour = colours[cell.family or ""]
        ax.scatter(lat, acc, s=70, marker=markers.get(cell.precision, "o"),
                   facecolors=colour if trained else "none", edgecolors=colour, linewidths=1.5)
        label = f"{cell.model} {cell.runtime} {cell.precision}" + ("" if trained else " (untrained)")
        ax.annotate(label, (lat, acc), fontsize=7, xytext=(4, 3), textcoords="offset points")
    trained_idx = [i for i, c in enumerate(measured) if c.weights == "trained"]
    front = [trained_idx[i] for i in pareto_front([points[i] for i in trained_idx])]
    if front:
        xs, ys = [points[i][0] for i in front], [points[i][1] for i in front]
        ax.plot(xs, ys, "k--", lw=1)
        ax.scatter(xs, ys, s=190, facecolors="none", edgecolors="k", linewidths=1, label="Pareto front (trained)")
    for family in families:
        ax.scatter([], [], color=colours[family], label=family)
    for precision, marker in markers.items():
        ax.scatter([], [], color="grey", marker=marker, label=precision)
    ax.scatter([], [], facecolors="none", edgecolors="grey", label="untrained weights (hollow)")
    ax.set_xlabel("batch-1 latency, p50 (ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Accuracy vs latency — {table.machine.cpu if table.machine else 'merged machines'}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    from t2tedge.fileio import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
