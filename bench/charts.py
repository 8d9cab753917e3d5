"""PNG charts of one invocation (matplotlib, no display needed)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a build machine
import matplotlib.pyplot as plt

Run = Mapping[str, Any]


def _label(run: Run) -> str:
    return f"{textwrap.fill(run['title'], 18)}\n{run['indicators']:,}"


def time_per_variant(runs: Sequence[Run], path: Path) -> bool:
    """End-to-end time of each comparison run (False: the plan ran none)."""
    shown = [run for run in runs if run["group"] == "comparison"]
    if not shown:
        return False
    figure, axes = plt.subplots(figsize=(max(6.0, 1.6 * len(shown)), 4.5))
    times = [run["end_to_end_seconds"] or 0 for run in shown]
    colours = ["#999999" if run["kind"] == "logic-app-model" else "#1f77b4" for run in shown]
    bars = axes.bar(range(len(shown)), times, color=colours)
    for bar, run in zip(bars, shown, strict=True):
        text = f"{run['end_to_end_seconds']:.0f} s" if run["finished"] else "did not finish"
        text += f"\n{run['delivered']['ratio']:.0%} delivered"
        axes.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    axes.set_xticks(range(len(shown)), [_label(run) for run in shown], fontsize=7)
    axes.set_ylabel("end-to-end seconds")
    axes.set_title("Time per variant\n(Log Analytics 1 s per query, Graph 100 ms, ThreatStream 500 ms per request)")
    axes.margins(y=0.2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def requests_per_variant(runs: Sequence[Run], path: Path) -> bool:
    """Graph and ThreatStream requests of each comparison run (False: the plan ran none)."""
    shown = [run for run in runs if run["group"] == "comparison"]
    if not shown:
        return False
    figure, axes = plt.subplots(figsize=(max(6.0, 1.6 * len(shown)), 4.5))
    width = 0.4
    positions = range(len(shown))
    for offset, (api, colour) in enumerate((("graph", "#2ca02c"), ("threatstream", "#d62728"))):
        values = [max(run[api]["requests"], 1) for run in shown]
        bars = axes.bar([p + (offset - 0.5) * width for p in positions], values, width, label=api, color=colour)
        axes.bar_label(bars, labels=[f"{run[api]['requests']:,}" for run in shown], fontsize=7)
    axes.set_yscale("log")
    axes.set_xticks(list(positions), [_label(run) for run in shown], fontsize=7)
    axes.set_ylabel("HTTP requests (log scale)")
    axes.set_title("API requests per variant")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _seconds_at_least(run: Run) -> float:
    """End-to-end time, or for a run the timeout stopped, how long it had run (its last sample)."""
    if run["end_to_end_seconds"] is not None:
        return float(run["end_to_end_seconds"])
    return float(max((t for t, _ in run["lookup_samples"]), default=0.0))


def scaling(runs: Sequence[Run], path: Path) -> bool:
    """Time and peak RSS of the all-in-one runs against N (False: the plan ran none)."""
    series = sorted(
        (
            run
            for run in runs
            if run["kind"] == "all-in-one"
            and run["graph_ceiling"] is None
            and run["threatstream_mode"] == "direct"
            and run["group"] in ("comparison", "scaling")
        ),
        key=lambda run: run["indicators"],
    )
    if not series:
        return False
    figure, time_axes = plt.subplots(figsize=(7, 4.5))
    sizes = [run["indicators"] for run in series]
    time_axes.plot(sizes, [_seconds_at_least(run) for run in series], "o-", color="#1f77b4")
    time_axes.set_xscale("log")
    time_axes.set_xlabel("indicators")
    time_axes.set_ylabel("end-to-end seconds", color="#1f77b4")
    for run in series:
        if not run["finished"]:
            seconds = _seconds_at_least(run)
            time_axes.annotate(f"≥ {seconds:.0f} s: did not\nfinish", (run["indicators"], seconds), fontsize=7)
    memory_axes = time_axes.twinx()
    memory_axes.plot(sizes, [run["tibridge_peak_rss_mib"] or 0 for run in series], "s--", color="#ff7f0e")
    memory_axes.set_ylabel("tibridge peak RSS (MiB)", color="#ff7f0e")
    time_axes.set_title("All-in-one run: time and peak RSS against N")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def stages(runs: Sequence[Run], path: Path) -> bool:
    """Collected, scored and published over time in the all-in-one comparison run (False: no such run)."""
    run = next(
        (r for r in runs if r["kind"] == "all-in-one" and r["group"] == "comparison" and r["stage_timeline"]), None
    )
    if run is None:
        return False
    timeline = run["stage_timeline"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    seconds = [entry[0] for entry in timeline]
    for index, label in (
        (1, "on the bus (collector)"),
        (2, "scored"),
        (3, "settled by the publisher (publish and expire verdicts)"),
    ):
        axes.plot(seconds, [entry[index] for entry in timeline], label=label)
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("messages")
    axes.set_title(f"Where the time goes: {run['title']}, {run['indicators']:,} indicators")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def draw(runs: Sequence[Run], directory: Path, name: str) -> list[str]:
    """Writes the charts next to the Markdown; returns their file names."""
    drawn = []
    charts = (("time", time_per_variant), ("requests", requests_per_variant), ("scaling", scaling), ("stages", stages))
    for suffix, chart in charts:
        target = directory / f"{name}-{suffix}.png"
        if chart(runs, target):
            drawn.append(target.name)
    return drawn
