"""Writing a benchmark's results: JSON, CSV, markdown, a PNG plot and tensorboard scalars.

Every file is named ``<machine>_<yyyymm>_<what>.<ext>`` (``BenchmarkResult.stem``) in the
output directory; tensorboard event files go to ``tensorboard/<stem>/`` below it. A result
row is a flat dict of numbers, strings and ``None`` (shown as "not measured" in markdown).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

MISSING = "–"  # a value a row does not have (skipped backend, placeholder GPU row)


@dataclass(frozen=True)
class MachineInfo:
    """What a result was measured on, and how."""

    slug: str             # short name used in file names: "cpu-2core", "h200"
    cpu_model: str
    cpu_cores: int        # cores this process may run on
    torch_threads: int    # torch intra-op threads the measurement used
    gpu: str              # "" when there is none
    gpu_count: int
    versions: dict[str, str]
    date: str             # ISO date-time, local
    command: str

    def summary_lines(self) -> list[str]:
        v = ", ".join(f"{k} {val}" for k, val in self.versions.items())
        gpu = f"{self.gpu_count} x {self.gpu}" if self.gpu else "none"
        return [f"- machine: `{self.slug}`: {self.cpu_model}, {self.cpu_cores} cores "
                f"(torch threads: {self.torch_threads}); GPU: {gpu}",
                f"- libraries: {v}", f"- date: {self.date}", f"- command: `{self.command}`"]


@dataclass
class BenchmarkResult:
    """Everything one sub-command measured: rows of plain values, plus their context.

    what: the short name in file names ("patch", "pipeline", ...).
    baseline: what the ratios in the rows are measured against (in the same run).
    columns: the columns of the markdown table, in order (CSV and JSON get every column).
    notes: sentences a reader needs (units, what was not measured and why).
    data: what the figures were measured on, with its statistics, when data matters
        (pipeline, e2e): shown in the header next to the machine and the baseline;
        ``data_stats`` the same statistics as numbers (JSON only).
    """

    what: str
    title: str
    machine: MachineInfo
    baseline: str
    rows: list[dict] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    data: str = ""
    data_stats: dict = field(default_factory=dict)

    @property
    def stem(self) -> str:
        """``<machine>_<yyyymm>_<what>``."""
        return f"{self.machine.slug}_{self.machine.date[:7].replace('-', '')}_{self.what}"

    def to_dict(self) -> dict:
        return {"what": self.what, "title": self.title, "machine": asdict(self.machine),
                "baseline": self.baseline, "data": self.data, "data_stats": self.data_stats,
                "config": self.config,
                "notes": self.notes, "columns": self.columns, "rows": self.rows}


@dataclass(frozen=True)
class PlotSpec:
    """How to draw a result: one panel per entry of ``panels``.

    panels: ``(y-axis label, [columns])``: each column of a panel is drawn for every series.
    group: the columns whose values name a series (e.g. ``("arch", "mode")``).
    kind: ``line`` (``x`` numeric, a line per series and column) or ``bar`` (a group of bars
        per series, one bar per column).
    """

    x: str
    panels: tuple[tuple[str, tuple[str, ...]], ...]
    group: tuple[str, ...] = ()
    kind: str = "line"
    xlabel: str = ""
    logy: bool = False

    def series(self, rows: list[dict]) -> dict[str, list[dict]]:
        """Rows split by series label, in order of first appearance."""
        out: dict[str, list[dict]] = {}
        for row in rows:
            label = " ".join(str(row.get(g, "")) for g in self.group) or "all"
            out.setdefault(label, []).append(row)
        return out


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def format_value(v: object) -> str:
    """Numbers to a readable width (3 significant digits below 100); None to a dash."""
    if v is None:
        return MISSING
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub markdown table of ``columns`` over ``rows``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def render_markdown(result: BenchmarkResult, png_name: str | None) -> str:
    """The human-readable report: context, baseline, notes, table, plot."""
    cols = result.columns or all_columns(result.rows)
    parts = [f"# {result.title}", "", *result.machine.summary_lines(),
             f"- baseline: {result.baseline}"]
    if result.data:
        parts.append(f"- data: {result.data}")
    parts.append("")
    if result.config:
        parts += ["Settings: " + ", ".join(f"{k}={v}" for k, v in result.config.items()), ""]
    parts += [markdown_table(result.rows, cols), ""]
    if result.notes:
        parts += ["Notes:", *[f"- {n}" for n in result.notes], ""]
    if png_name:
        parts += [f"![{result.title}]({png_name})", ""]
    return "\n".join(parts)


def all_columns(rows: list[dict]) -> list[str]:
    """Every key of every row, in order of first appearance."""
    cols: dict[str, None] = {}
    for row in rows:
        cols.update(dict.fromkeys(row))
    return list(cols)


def write_csv(path: Path, rows: list[dict]) -> None:
    cols = all_columns(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for row in rows:
            w.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in cols})


def plot(result: BenchmarkResult, spec: PlotSpec, path: Path) -> None:
    """Draw ``spec`` over the result rows into a PNG (matplotlib's Agg backend, no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = spec.series(result.rows)
    n = len(spec.panels)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    for ax, (ylabel, cols) in zip(axes[0], spec.panels):
        if spec.kind == "line":
            _draw_lines(ax, series, spec.x, cols)
            ax.set_xlabel(spec.xlabel or spec.x)
        else:
            _draw_bars(ax, series, cols)
        ax.set_ylabel(ylabel)
        if spec.logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{result.title}\n{result.machine.slug}, {result.machine.date[:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_lines(ax, series: dict[str, list[dict]], x: str, cols: tuple[str, ...]) -> None:
    styles = ("-o", "--s", ":^", "-.d")
    for label, rows in series.items():
        for j, col in enumerate(cols):
            pts = sorted((r[x], r[col]) for r in rows if _is_number(r.get(x))
                         and _is_number(r.get(col)))
            if pts:
                name = label if len(cols) == 1 else f"{label}: {col}"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[j % len(styles)],
                        label=name)
    xs = sorted({r[x] for rows in series.values() for r in rows if _is_number(r.get(x))})
    if xs:
        ax.set_xticks(xs)


def _draw_bars(ax, series: dict[str, list[dict]], cols: tuple[str, ...]) -> None:
    labels = list(series)
    width = 0.8 / max(1, len(cols))
    for j, col in enumerate(cols):
        heights = []
        for label in labels:
            vals = [r[col] for r in series[label] if _is_number(r.get(col))]
            heights.append(vals[0] if vals else 0.0)
        pos = [i + (j - (len(cols) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(pos, heights, width=width, label=col if len(cols) > 1 else None)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)


def write_tensorboard(result: BenchmarkResult, spec: PlotSpec | None, log_dir: Path) -> bool:
    """One scalar per numeric column per row: tag ``<what>/<column>/<series>``, step = the
    plot's x value when it is an integer, else the row index. False when tensorboard is absent.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    groups = spec.group if spec else ()
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for i, row in enumerate(result.rows):
            label = "_".join(str(row.get(g, "")) for g in groups) or f"row{i}"
            x = row.get(spec.x) if spec else None
            step = int(x) if _is_number(x) and float(x).is_integer() else i
            for col, v in row.items():
                if _is_number(v) and (spec is None or col != spec.x):
                    writer.add_scalar(f"{result.what}/{col}/{label}", v, global_step=step)
    finally:
        writer.close()
    return True


def write_results(result: BenchmarkResult, output_dir: str | Path,
                  plot_spec: PlotSpec | None = None, tensorboard: bool = True) -> dict[str, Path]:
    """Write ``<stem>.json``, ``.csv``, ``.md``, ``.png`` (when ``plot_spec`` is given) and
    tensorboard scalars under ``output_dir``; return the paths by kind."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{result.stem}.json", "csv": out / f"{result.stem}.csv",
             "md": out / f"{result.stem}.md"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    write_csv(paths["csv"], result.rows)
    png_name = None
    if plot_spec is not None and result.rows:
        paths["png"] = out / f"{result.stem}.png"
        plot(result, plot_spec, paths["png"])
        png_name = paths["png"].name
    paths["md"].write_text(render_markdown(result, png_name))
    if tensorboard:
        tb = out / "tensorboard" / result.stem
        if write_tensorboard(result, plot_spec, tb):
            paths["tensorboard"] = tb
    return paths
