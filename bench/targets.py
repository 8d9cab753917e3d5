"""Issue 11's targets, judged on the figures of one invocation. Plain code over the run records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.figures import ratio

Run = Mapping[str, Any]

SPEEDUP_TARGET = 20.0
SPEEDUP_SIZE = 10_000
CEILING_SHARE_TARGET = 0.90
CPU_SECONDS_PER_1000_TARGET = 0.25
RSS_GROWTH_TARGET = 1.5


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: this invocation did not measure it
    gap: str = ""  # by how much it is missed


def _find(runs: Sequence[Run], **wanted: Any) -> Run | None:
    return next((run for run in runs if all(run.get(key) == value for key, value in wanted.items())), None)


def _baseline(runs: Sequence[Run]) -> Run | None:
    return _find(runs, kind="logic-app-model")


def _all_in_one(runs: Sequence[Run]) -> Run | None:
    return _find(runs, kind="all-in-one", group="comparison", threatstream_mode="direct")


def speedup(run: Run, baseline: Run | None) -> float | None:
    """How many times less end-to-end time the run took than the Logic App model in the same invocation."""
    if baseline is None:
        return None
    return ratio(baseline.get("end_to_end_seconds"), run.get("end_to_end_seconds"))


def _size_note(run: Run, size: int) -> str:
    return "" if run["indicators"] == size else f" (measured at {run['indicators']:,}, the target is at {size:,})"


def _speed(runs: Sequence[Run]) -> Verdict:
    target = (
        f"≥ {SPEEDUP_TARGET:.0f}× the Logic App model's end-to-end time at 10,000, delivered ÷ expected = 1.000, "
        "0 duplicates"
    )
    baseline, run = _baseline(runs), _all_in_one(runs)
    if run is None or baseline is None or not run["finished"]:
        return Verdict(target, "not measured", None)
    times = speedup(run, baseline) or 0.0
    delivered, duplicates = run["delivered"]["ratio"], run["duplicates"]
    measured = (
        f"{times:.2f}× ({baseline['end_to_end_seconds']:.1f} s vs {run['end_to_end_seconds']:.1f} s), "
        f"delivered {delivered:.3f}, {duplicates} duplicates{_size_note(run, SPEEDUP_SIZE)}"
    )
    met = times >= SPEEDUP_TARGET and delivered == 1.0 and duplicates == 0
    gap = "" if met else f"{SPEEDUP_TARGET / times:.1f}× too slow" if times else "no time measured"
    return Verdict(target, measured, met, gap)


def _ceilings(runs: Sequence[Run]) -> list[Verdict]:
    verdicts = []
    for run in runs:
        if run["group"] != "ceiling":
            continue
        ceiling = run["graph_ceiling"]
        target = (
            f"unknown Graph ceiling {ceiling:.0f}/s: ≥ 90% of it sustained with default settings, "
            "0 requests inside Retry-After"
        )
        share = run.get("ceiling_ratio")
        inside = run["inside_retry_after"]
        if share is None:
            verdicts.append(Verdict(target, f"no sustained lookup rate measured; {inside} inside Retry-After", False))
            continue
        met = share >= CEILING_SHARE_TARGET and inside == 0
        measured = (
            f"{run['lookups_per_second']:.1f} lookups/s = {share:.0%} of {ceiling:.0f}/s; {inside} inside Retry-After"
        )
        gap = "" if met else f"{CEILING_SHARE_TARGET / share:.1f}× below the 90% mark" if share else "no lookups"
        verdicts.append(Verdict(target, measured, met, gap))
    return verdicts


def _cpu(runs: Sequence[Run]) -> Verdict:
    target = f"≤ {CPU_SECONDS_PER_1000_TARGET} ms CPU per indicator end to end in the all-in-one run"
    run = _all_in_one(runs)
    if run is None or run["cpu"]["seconds_per_1000_indicators"] is None:
        return Verdict(target, "not measured", None)
    per = run["cpu"]["seconds_per_1000_indicators"]
    startup = run["cpu"]["tibridge_startup_seconds"]
    measured = f"{per:.3f} ms per indicator (plus {startup:.1f} s CPU of start-up) at {run['indicators']:,}"
    met = per <= CPU_SECONDS_PER_1000_TARGET
    return Verdict(target, measured, met, "" if met else f"{per / CPU_SECONDS_PER_1000_TARGET:.1f}× over")


def _memory(runs: Sequence[Run]) -> Verdict:
    target = "peak RSS at 1M ≤ 1.5 × peak RSS at 10k; 1M indicators complete"
    series = sorted(
        (
            run
            for run in runs
            if run["kind"] == "all-in-one"
            and run["group"] in ("comparison", "scaling")
            and run["threatstream_mode"] == "direct"
            and run["graph_ceiling"] is None
        ),
        key=lambda run: run["indicators"],
    )
    if len(series) < 2:
        return Verdict(target, "not measured", None)
    small, large = series[0], series[-1]
    growth = ratio(large["tibridge_peak_rss_mib"], small["tibridge_peak_rss_mib"]) or 0.0
    complete = large["finished"] and not large["problems"]
    measured = (
        f"{large['tibridge_peak_rss_mib']:.0f} MiB at {large['indicators']:,} vs "
        f"{small['tibridge_peak_rss_mib']:.0f} MiB at {small['indicators']:,} = {growth:.2f}×; {large['indicators']:,} "
        + ("completed and reconciled" if complete else "did not complete cleanly")
    )
    if large["indicators"] != 1_000_000 or small["indicators"] != 10_000:
        measured += " (the target compares 1M with 10k)"
    met = growth <= RSS_GROWTH_TARGET and complete
    gap = "" if met else (f"{growth / RSS_GROWTH_TARGET:.1f}× over" if growth > RSS_GROWTH_TARGET else "incomplete")
    return Verdict(target, measured, met, gap)


def _economy(runs: Sequence[Run]) -> list[Verdict]:
    tibridge = [run for run in runs if run["kind"] != "logic-app-model" and run["finished"]]
    if not tibridge:
        return [Verdict("Graph and ThreatStream requests within their bounds", "not measured", None)]
    graph_over = [
        f"{run['scenario']} {run['graph']['requests']} > {run['graph']['floor'] + run['graph']['retries']}"
        for run in tibridge
        if run["graph"]["requests"] > run["graph"]["floor"] + run["graph"]["retries"]
    ]
    threatstream_over = [
        f"{run['scenario']} {run['threatstream']['requests']} > {run['threatstream']['bound']}"
        for run in tibridge
        if run["threatstream"]["requests"] > run["threatstream"]["bound"]
    ]
    return [
        Verdict(
            "Graph requests ≤ ⌈unique scorable / 20⌉ + retries",
            "; ".join(graph_over) if graph_over else f"all {len(tibridge)} tibridge runs within",
            not graph_over,
            f"{len(graph_over)} of {len(tibridge)} runs over" if graph_over else "",
        ),
        Verdict(
            "ThreatStream requests ≤ ⌈published / batch size⌉ + profiles",
            "; ".join(threatstream_over) if threatstream_over else f"all {len(tibridge)} tibridge runs within",
            not threatstream_over,
            f"{len(threatstream_over)} of {len(tibridge)} runs over" if threatstream_over else "",
        ),
    ]


def _scorers(runs: Sequence[Run]) -> Verdict:
    target = "3 scorer processes finish scoring faster than 1 when latency, not the ceiling, binds"
    one, three = _find(runs, kind="three-process", scorers=1), _find(runs, kind="three-process", scorers=3)
    if one is None or three is None:
        return Verdict(target, "not measured", None)
    first, second = one["stage_seconds"]["scored"], three["stage_seconds"]["scored"]
    if first is None or second is None:
        return Verdict(target, "scoring did not finish in both runs", False)
    met = second < first
    gap = "" if met else f"{second - first:.1f} s slower"
    return Verdict(target, f"scored after {second:.1f} s with 3 scorers vs {first:.1f} s with 1", met, gap)


def evaluate(runs: Sequence[Run]) -> list[Verdict]:
    return [_speed(runs), *_ceilings(runs), _cpu(runs), _memory(runs), *_economy(runs), _scorers(runs)]
