"""Writes a study's results: report.md, results.json and PNG plots in results/<study>/.

Every file is written to a temporary name in the same folder and then renamed, so an
interrupted run never leaves a half-written report. A study may write its report many times
while it runs (``write(status="running")`` after each finished pair, see
``linalign.experiments.pairs``): ``mark``/``rewind`` let it rebuild the part of the report that
grows, and ``fail`` records a failed step, which results.json and report.md then name.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import traceback
from typing import Optional, Sequence

import numpy as np

from linalign.atomic import atomic_write, jsonable


def fmt(v, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` decimals, None/NaN as "n/a"."""
    if v is None:
        return "n/a"
    if isinstance(v, (float, np.floating)):
        return "n/a" if not math.isfinite(float(v)) else f"{float(v):.{digits}f}"
    return str(v)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence], digits: int = 3) -> str:
    """A GitHub Markdown table from a header row and value rows."""
    out = ["| " + " | ".join(map(str, headers)) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(v, digits) for v in r) + " |" for r in rows]
    return "\n".join(out)


class Report:
    """Collects Markdown sections, plots and a results dict for one study.

    Args:
      study: study name (folder name).
      out_root: parent folder; the report goes to out_root/study.
      title: the report's heading.
    """

    def __init__(self, study: str, out_root: str | os.PathLike = "results", title: Optional[str] = None):
        self.study = study
        self.dir = pathlib.Path(out_root) / study
        self.dir.mkdir(parents=True, exist_ok=True)
        self.parts: list[str] = [f"# {title or study}\n"]
        self.results: dict = {}
        self.files: list[str] = []
        self.failures: list[dict] = []

    def fail(self, what: str, exc: BaseException) -> dict:
        """Records a failed step (a model pair, or a model every pair of it needs).

        Args:
          what: the step, e.g. "SmolLM2 -> Gemma3" or "model Gemma3: load".
          exc: the exception it raised.

        Returns:
          The record kept in results.json["failures"]: step, exception type and message, and
          the innermost frames of the traceback.
        """
        msg = str(exc)
        notes = getattr(exc, "__notes__", None)
        if notes:
            msg += " (" + "; ".join(notes) + ")"
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        rec = {"step": what, "type": type(exc).__name__, "message": msg,
               "traceback": "".join(tb[-3:])}
        self.failures.append(rec)
        return rec

    def mark(self) -> tuple[int, int]:
        """A point in the report to ``rewind`` to (before the part that is rebuilt)."""
        return len(self.parts), len(self.files)

    def rewind(self, mark: tuple[int, int]) -> None:
        """Drops the sections and plot links added since ``mark`` (their PNGs are rewritten)."""
        self.parts, self.files = self.parts[: mark[0]], self.files[: mark[1]]

    def text(self, md: str) -> None:
        self.parts.append(md.rstrip() + "\n")

    def table(self, headers, rows, caption: str = "", digits: int = 3) -> str:
        md = markdown_table(headers, rows, digits)
        if caption:
            self.parts.append(f"**{caption}**\n")
        self.parts.append(md + "\n")
        return md

    def _save_fig(self, fig, name: str) -> str:
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        fname = f"{name}.png"
        atomic_write(self.dir / fname, buf.getvalue())
        self.files.append(fname)
        self.parts.append(f"![{name}]({fname})\n")
        return fname

    def heatmap(self, name: str, matrix, row_labels, col_labels, title: str = "",
                vmin=None, vmax=None, fmt_digits: int = 2, cmap: str = "viridis",
                xlabel: str = "", ylabel: str = "", cbar_label: str = "") -> str:
        """Saves an annotated heatmap PNG and links it in the report.

        The colour scale spans the data's own range unless vmin/vmax are given, so nearby
        values (0.67 vs 0.89) get clearly different colours; every cell also prints its value.

        Args:
          name: file stem.
          matrix: [rows, cols] values (NaN cells are left blank).
          title: the plot's title (wrapped to the figure width).
          vmin, vmax: fixed colour-scale ends (default: the finite data's min and max).
          xlabel, ylabel, cbar_label: axis and colour-bar labels.
        """
        import textwrap

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        m = np.asarray(matrix, np.float64)
        finite = m[np.isfinite(m)]
        lo = float(vmin) if vmin is not None else (float(finite.min()) if finite.size else 0.0)
        hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
        if not hi > lo:  # one distinct value: centre it on a unit-wide scale
            lo, hi = lo - 0.5, hi + 0.5
        width = 2.6 + 1.25 * m.shape[1]
        fig, ax = plt.subplots(figsize=(width, 1.9 + 0.95 * m.shape[0]))
        im = ax.imshow(np.ma.masked_invalid(m), vmin=lo, vmax=hi, cmap=cmap)
        ax.set_xticks(range(m.shape[1]), col_labels, rotation=30, ha="right", fontsize=10)
        ax.set_yticks(range(m.shape[0]), row_labels, fontsize=10)
        colours = plt.get_cmap(cmap)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    # Dark text on light cells and light text on dark ones (by the cell's luminance).
                    r, g, b, _ = colours((m[i, j] - lo) / (hi - lo))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b > 0.5
                    ax.text(j, i, f"{m[i, j]:.{fmt_digits}f}", ha="center", va="center",
                            color="black" if dark else "white", fontsize=10)
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        bar.ax.tick_params(labelsize=9)
        if cbar_label:
            bar.set_label(cbar_label, fontsize=10)
        if xlabel:
            ax.set_xlabel(xlabel, fontsize=10)
        if ylabel:
            ax.set_ylabel(ylabel, fontsize=10)
        if title:
            ax.set_title("\n".join(textwrap.wrap(title, width=max(30, int(width * 9)))), fontsize=11)
        return self._save_fig(fig, name)

    def curves(self, name: str, x, ys: dict, xlabel: str, ylabel: str, title: str = "",
               logx: bool = False) -> str:
        """Saves a line plot of several named series over the same x and links it."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8.0, 4.2))
        # The default cycle has 10 colours; more series would share one, so vary the line
        # style and marker too.
        colours = plt.get_cmap("tab20" if len(ys) > 10 else "tab10").colors
        for k, (label, y) in enumerate(ys.items()):
            ax.plot(x, y, marker="osd^v"[k % 5], linestyle=("-", "--", ":")[k % 3],
                    color=colours[k % len(colours)], label=label)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=10)
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5))
        return self._save_fig(fig, name)

    def bars(self, name: str, groups: Sequence[str], series: dict, ylabel: str, title: str = "") -> str:
        """Grouped bar chart: one group per entry of ``groups``, one bar per series."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) + 2), 4.2))
        w = 0.8 / max(1, len(series))
        for s, (label, vals) in enumerate(series.items()):
            ax.bar(np.arange(len(groups)) + s * w - 0.4 + w / 2, vals, w, label=label)
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=10)
        ax.set_ylabel(ylabel, fontsize=10)
        ax.set_title(title, fontsize=11)
        # Outside the axes: a legend inside would cover the tallest bars.
        ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.grid(axis="y", alpha=0.3)
        return self._save_fig(fig, name)

    def _failures_md(self) -> list[str]:
        if not self.failures:
            return []
        lines = [f"**{len(self.failures)} failed step(s)**; the other pairs ran. Each is left out of "
                 "the tables and plots below:\n"]
        lines += [f"- {f['step']}: `{f['type']}`: {f['message']}" for f in self.failures]
        return ["\n".join(lines) + "\n"]

    def write(self, status: str = "complete") -> pathlib.Path:
        """Writes report.md and results.json; returns the study folder.

        Args:
          status: "complete", or a progress line such as "running: 3 of 12 pairs done" for the
            writes a study makes while it runs (shown under the title and in results.json).
        """
        results = {**self.results, "status": status, "failures": self.failures}
        head = self.parts[:1]
        if status != "complete":
            head.append(f"*Status: {status} (this report is rewritten as each pair finishes).*\n")
        atomic_write(self.dir / "results.json",
                     json.dumps(jsonable(results), indent=2, sort_keys=True).encode())
        atomic_write(self.dir / "report.md",
                     "\n".join(head + self._failures_md() + self.parts[1:]).encode())
        return self.dir
