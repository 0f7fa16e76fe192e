"""Views of a parity record (`t2tedge.parity/1`): the terminal table, Markdown (what CI shows on a run's page),
JUnit XML (one test case per pair) and a PNG of SQNR per block."""

from __future__ import annotations

import os
from pathlib import Path
from xml.etree import ElementTree

from t2tedge.results import ParityPair, ParityRecord


def _pair_cells(pair: ParityPair) -> list[str]:
    return [f"{pair.first} vs {pair.second}", pair.tolerance_key, f"{pair.max_abs:.2e}", f"{pair.cosine:.5f}",
            f"{pair.sqnr_db:.1f}", f"{100 * pair.top1_agreement:.1f}%",
            "PASS" if pair.passed else "FAIL: " + "; ".join(pair.failures)]


# The terminal shows the block table up to this many compared pairs (a column each); the files hold every one.
TERMINAL_BLOCK_PAIRS = 4
PAIR_COLUMNS = ["pair", "tolerance", "max_abs", "cos_min", "SQNR dB", "top1_agree", "result"]


def _where(pair: ParityPair) -> str:
    if not pair.blocks:
        return ""
    first = pair.first_divergent or "none past the tolerance"
    return f"first divergent block: {first}; most error added in: {pair.most_loss or 'none'}"


def format_table(record: ParityRecord) -> str:
    """What the terminal shows: one line per pair, the files skipped, where failing pairs part ways."""
    ran = [f for f in record.files if f.status == "ran" and f.runtime_info and f.path]
    reference = f" and the reference {record.reference}" if record.reference else ""
    lines = [f"parity {record.model}: {len(ran)} files{reference} on {record.images} images of {record.data}"]
    rows = [PAIR_COLUMNS] + [_pair_cells(p) for p in record.pairs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(PAIR_COLUMNS) - 1)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines += [f"skipped {f.name}: {f.reason}" for f in record.files if f.status == "skipped"]
    for pair in record.pairs:
        if pair.blocks and (not pair.passed or pair.first_divergent):
            lines.append(f"{pair.first} vs {pair.second}: {_where(pair)}")
    compared = sum(bool(p.blocks) for p in record.pairs)
    if record.blocks and compared <= TERMINAL_BLOCK_PAIRS:
        lines += ["", block_table(record, markdown=False)]
    elif record.blocks:
        lines.append(f"(the block table of {compared} pairs is in --markdown, --json and --png)")
    broken = sum(not p.passed for p in record.pairs)
    lines.append(f"{len(record.pairs) - broken} of {len(record.pairs)} pairs within tolerance" +
                 (f"; {broken} broken" if broken else ""))
    return "\n".join(lines)


def block_table(record: ParityRecord, markdown: bool = True) -> str:
    """SQNR (dB) per block, one column per compared pair; a cell without a number says why in a note below."""
    compared = [p for p in record.pairs if p.blocks]
    header = ["block"] + [f"{p.first} vs {p.second}" for p in compared]
    rows, notes = [], {}
    for index, block in enumerate(record.blocks):
        row = [block]
        for pair in compared:
            score = pair.blocks[index]
            if score.sqnr_db is not None:
                mark = " <- first divergent" if pair.first_divergent == block else ""
                mark += " <- most error added" if pair.most_loss == block else ""
                row.append(f"{score.sqnr_db:.1f} (cos {score.cosine:.4f}){mark}")
            else:
                number = notes.setdefault(score.note, len(notes) + 1)
                row.append(f"n/a [{number}]")
        rows.append(row)
    footer = [f"[{n}] {note}" for note, n in notes.items()]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines + [""] + [f"{line}  " for line in footer])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + rows]
    return "\n".join(lines + footer)


def render_markdown(record: ParityRecord) -> str:
    passed = sum(p.passed for p in record.pairs)
    lines = [f"## Parity: {record.model}, {passed} of {len(record.pairs)} pairs within tolerance", "",
             f"{record.images} images of `{record.data}`" +
             (f"; reference `{record.reference}` (PyTorch)" if record.reference else "") +
             f"; t2tedge {record.version}, {record.machine.cpu}.", "",
             "| file | runtime | precision | status |", "| --- | --- | --- | --- |"]
    lines += [f"| `{f.name}` | {f.runtime} | {f.precision} | {f.status if f.status == 'ran' else 'skipped: ' + str(f.reason)} |"
              for f in record.files]
    lines += ["", "| " + " | ".join(PAIR_COLUMNS) + " |", "|" + " --- |" * len(PAIR_COLUMNS)]
    lines += ["| " + " | ".join(_pair_cells(p)) + " |" for p in record.pairs]
    if record.blocks:
        lines += ["", f"### Block by block ({record.block_images} images): SQNR dB of the second file against the first",
                  ""]
        lines += [f"- {p.first} vs {p.second}: {_where(p)}" for p in record.pairs if p.blocks]
        lines += ["", block_table(record)]
        means = [f"- `{f.name}`: {f.blocks}" for f in record.files if f.blocks]
        lines += ["", "How each file's block outputs were read:", ""] + means
    return "\n".join(lines) + "\n"


def junit_xml(record: ParityRecord) -> str:
    """One test case per pair; a broken pair's failure names its numbers and where the pair parts ways."""
    suite = ElementTree.Element("testsuite", name=f"t2tedge parity {record.model}", tests=str(len(record.pairs)),
                                failures=str(sum(not p.passed for p in record.pairs)), errors="0",
                                skipped=str(sum(f.status == "skipped" for f in record.files)))
    for pair in record.pairs:
        case = ElementTree.SubElement(suite, "testcase", classname=f"parity.{record.model}",
                                      name=f"{pair.first} vs {pair.second}")
        if not pair.passed:
            text = "; ".join(pair.failures) + (f"; {_where(pair)}" if pair.blocks else "")
            failure = ElementTree.SubElement(case, "failure", message=text, type="tolerance")
            failure.text = (f"tolerance {pair.tolerance_key} {pair.tolerance}: max_abs {pair.max_abs:.3g}, cosine "
                            f"{pair.cosine:.6f}, SQNR {pair.sqnr_db:.1f} dB, top-1 agreement "
                            f"{100 * pair.top1_agreement:.1f}%")
    for file in record.files:
        if file.status == "skipped":
            case = ElementTree.SubElement(suite, "testcase", classname=f"parity.{record.model}", name=file.name)
            ElementTree.SubElement(case, "skipped", message=str(file.reason))
    ElementTree.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(suite, encoding="unicode") + "\n"


def append_step_summary(markdown: str) -> Path | None:
    """Append to the file GitHub Actions names in $GITHUB_STEP_SUMMARY (the run's page), when it is set."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(markdown)
    return Path(target)


def render_blocks_png(record: ParityRecord, path: str | os.PathLike) -> None:
    """SQNR per block, one line per compared pair. ImportError without matplotlib (the `plot` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = [p for p in record.pairs if p.blocks]
    figure, axes = plt.subplots(figsize=(max(8.0, 0.55 * len(record.blocks)), 4.8))
    for pair in compared:
        points = [(i, s.sqnr_db) for i, s in enumerate(pair.blocks) if s.sqnr_db is not None]
        if points:
            xs, ys = zip(*points)
            axes.plot(xs, ys, marker="o", label=f"{pair.first} vs {pair.second}")
    axes.set_xticks(range(len(record.blocks)))
    axes.set_xticklabels(record.blocks, rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("SQNR (dB), second file vs first")
    axes.set_title(f"{record.model}: block outputs on {record.block_images} images")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_views(record: ParityRecord, json_path: Path | None = None, junit: Path | None = None,
                markdown: Path | None = None, png: Path | None = None) -> list[str]:
    """Write the record and each view asked for, and append the Markdown to $GITHUB_STEP_SUMMARY when that is set;
    what was written, in words (no PNG without matplotlib)."""
    from t2tedge.fileio import atomic_write_text

    written = []
    summary = render_markdown(record)
    for path, text in ((json_path, record.to_json), (junit, lambda: junit_xml(record)), (markdown, lambda: summary)):
        if path is not None:
            atomic_write_text(path, text())
            written.append(str(path))
    if png is not None:
        try:
            render_blocks_png(record, png)
            written.append(str(png))
        except ImportError:
            pass
    appended = append_step_summary(summary)
    if appended:
        written.append(f"{appended} (appended)")
    return written
