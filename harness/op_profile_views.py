"""Views of `t2tedge.op-profile/1` records: Markdown for one record or a comparison, and a PNG of time per block,
one bar per record side by side, each bar split by precision (what INT8 sped up, what stayed float)."""

from __future__ import annotations

from pathlib import Path

from t2tedge.harness.op_profile import claimed_share, compare_blocks
from t2tedge.results import OpProfileRecord

PRECISION_COLOURS = {"int8": "#2b8cbe", "fp32": "#e34a33", "fp16": "#fdbb84", "bf16": "#fc8d59",
                     "convert": "#bdbdbd", "unknown": "#756bb1"}
TOP_ROWS = 12


def title(record: OpProfileRecord) -> str:
    return f"{record.model} {record.runtime} {record.precision}"


def _startup_rows(records: list[OpProfileRecord]) -> list[str]:
    head = "| | " + " | ".join(title(r) for r in records) + " |"
    rows = [head, "|---" * (len(records) + 1) + "|"]
    fields = [("runtime import (ms)", lambda r: "-" if r.import_ms is None else f"{r.import_ms:.0f}"),
              ("load (ms)", lambda r: f"{r.load_ms:.0f}"), ("first inference (ms)", lambda r: f"{r.first_run_ms:.1f}"),
              ("p50 / p90 / p99 (ms)", lambda r: f"{r.latency_b1.p50_ms:.2f} / {r.latency_b1.p90_ms:.2f} / "
                                                  f"{r.latency_b1.p99_ms:.2f}"),
              ("resident before load (MB)", lambda r: f"{r.rss_before_load_mb:.0f}"),
              ("peak resident over load (MB)", lambda r: f"{r.load_peak_rss_mb:.0f}"),
              ("peak resident over load and runs (MB)", lambda r: f"{r.peak_rss_mb:.0f}"),
              ("profiled: op time / wall (ms)", lambda r: f"{r.op_sum_ms:.2f} / {r.wall_ms:.2f} "
                                                          f"({100 * r.op_sum_ms / r.wall_ms:.0f}%)"
                                                          if r.op_sum_ms and r.wall_ms else "not reported"),
              ("profiled wall / unprofiled p50", lambda r: f"{r.wall_ms / r.latency_b1.p50_ms:.2f}x"
                                                            if r.wall_ms else "-"),
              ("blocks claim", lambda r: f"{100 * claimed_share(r):.1f}% of op time" if r.op_sum_ms else "-")]
    rows += [f"| {name} | " + " | ".join(value(r) for r in records) + " |" for name, value in fields]
    return rows


def render_markdown(record: OpProfileRecord) -> str:
    lines = [f"# {title(record)}: where the time goes", "",
             f"{record.artifact} ({record.artifact_bytes / 1e6:.1f} MB), {record.runtime} {record.runtime_version}, "
             f"{record.threads} threads, {record.machine.cpu}; t2t-edge {record.version}; {record.runs} runs.", ""]
    lines += _startup_rows([record]) + [""]
    if not record.op_sum_ms:
        lines += [f"No per-op times: {record.op_timing}.", "",
                  "What the runtime reports: " + ", ".join(f"{k} {v}" for k, v in record.runtime_info.items()), ""]
        return "\n".join(lines)
    lines += [f"Profiler: {record.profiler}. Time outside the ops: {record.outside_ops}.", ""]
    for heading, rows in (("Blocks", record.blocks), ("Op types", record.op_types[:TOP_ROWS]),
                          ("Precisions", record.precisions)):
        lines += [f"## {heading}", "", "| | ms | share | ops |", "|---|---|---|---|"]
        lines += [f"| {row.name} | {row.ms:.3f} | {100 * row.share:.1f}% | {row.ops} |" for row in rows] + [""]
    unclaimed = [op for op in record.ops if op.block is None]
    lines += ["## Ops no block claims", ""]
    if unclaimed:
        lines += ["| op | type | ms |", "|---|---|---|"]
        lines += [f"| {op.name} | {op.op_type} | {op.ms:.3f} |" for op in sorted(unclaimed, key=lambda o: -o.ms)]
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


def render_compare_markdown(first: OpProfileRecord, second: OpProfileRecord) -> str:
    a, b = title(first), title(second)
    machines = (f"one machine ({first.machine.cpu})" if first.machine == second.machine else
                f"{first.machine.cpu} vs {second.machine.cpu}")
    lines = [f"# {a} vs {b}", "", f"{machines}; {first.threads} vs {second.threads} threads.", ""]
    lines += _startup_rows([first, second]) + [""]
    lines += ["## Time per block (ms)", "", f"| block | {a} | {b} | ratio |", "|---|---|---|---|"]
    for name, x, y in compare_blocks(first, second):
        ratio = f"{y / x:.2f}x" if x and y is not None else "-"
        lines.append(f"| {name} | {'-' if x is None else f'{x:.3f}'} | {'-' if y is None else f'{y:.3f}'} | {ratio} |")
    if first.op_sum_ms and second.op_sum_ms:
        lines.append(f"| **all ops** | {first.op_sum_ms:.3f} | {second.op_sum_ms:.3f} | "
                     f"{second.op_sum_ms / first.op_sum_ms:.2f}x |")
    return "\n".join(lines) + "\n"


def render_bars(records: list[OpProfileRecord], path: Path) -> None:
    """Time per block, one horizontal bar per record side by side, split by precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from t2tedge.fileio import atomic_path

    blocks = list(dict.fromkeys(name for r in records for name, *_ in compare_blocks(r, r)))
    height = 0.8 / max(len(records), 1)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.28 * len(blocks) * max(1, len(records) / 1.5)), dpi=110)
    for k, record in enumerate(records):
        left = [0.0] * len(blocks)
        for precision, colour in PRECISION_COLOURS.items():
            widths = [sum(op.ms for op in record.ops if (op.block or "(no block)") == block and op.precision == precision)
                      for block in blocks]
            if any(widths):
                ax.barh([i + k * height for i in range(len(blocks))], widths, height=height * 0.95, left=left,
                        color=colour, label=precision, edgecolor="white", linewidth=0.3)
                left = [x + w for x, w in zip(left, widths)]
        for i, total in enumerate(left):
            if total:
                ax.text(total, i + k * height, f" {title(record).split(' ', 1)[1]}", va="center", fontsize=6)
    ax.set_yticks([i + height * (len(records) - 1) / 2 for i in range(len(blocks))], blocks, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("mean time per run (ms), from the runtime's own profiler")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    ax.set_title(" | ".join(title(r) for r in records) + f" — {records[0].machine.cpu}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
