"""The run's figures (control period and its jitter, overruns, inference latency per chunk, steps, safety
violations, the stop and why), their console lines (the last begins `Inference latency`) and run.json."""

import json
from pathlib import Path

import numpy as np

from deploy.control_loop import LoopSettings, LoopStats
from episode_format.atomic import atomic_write_text


def _percentiles_ms(values_s) -> dict | None:
    if len(values_s) == 0:
        return None
    values = np.asarray(values_s) * 1000.0
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max()), "count": int(len(values))}


def summarize(stats: LoopStats, settings: LoopSettings) -> dict:
    nominal = 1.0 / settings.hz
    periods = np.diff(stats.tick_starts)  # one per executed tick: start to the next tick's start
    return {
        "steps": stats.steps,
        "duration_s": float(stats.tick_starts[-1] - stats.tick_starts[0]) if len(stats.tick_starts) > 1 else 0.0,
        "control_period_ms": {"nominal": nominal * 1000.0, **(_percentiles_ms(periods) or {})},
        "jitter_ms": _percentiles_ms(np.abs(periods - nominal)),  # |period - nominal|
        "overruns": stats.overruns,
        "inference_latency_ms": _percentiles_ms(stats.latencies_s),  # every chunk after chunk 0
        "first_chunk_ms": stats.first_chunk_s * 1000.0,  # chunk 0, predicted before the clock started
        "chunks": [{"predicted_at_tick": at, "applied_from_tick": arrived} for at, arrived in stats.chunk_ticks],
        "starved_ticks": stats.starved,
        "violations": dict(stats.violations),
        "violation_events": stats.violation_events,
        "stops": [stats.stop],
    }


def summary_lines(summary: dict, settings: LoopSettings) -> list[str]:
    mode = "asynchronous" if settings.async_inference else "synchronous"
    period, jitter, latency = summary["control_period_ms"], summary["jitter_ms"], summary["inference_latency_ms"]
    stop = summary["stops"][0]
    lines = [f"Steps: {summary['steps']} executed in {summary['duration_s']:.1f} s at {settings.hz:g} Hz ({mode} "
             f"inference, n_action_steps {settings.n_action_steps}{', dry run: nothing sent' if settings.dry_run else ''})"]
    if jitter:
        lines.append(f"Control period: p50 {period['p50']:.1f} ms, p99 {period['p99']:.1f} ms (nominal "
                     f"{period['nominal']:.1f} ms); jitter p50 {jitter['p50']:.1f} ms, p99 {jitter['p99']:.1f} ms; "
                     f"overruns {summary['overruns']}/{summary['steps']}")
    violations = ", ".join(f"{count} {kind}" for kind, count in sorted(summary["violations"].items()))
    lines.append(f"Safety: {violations or 'no violation'}")
    lines.append(f"Stopped: {stop['kind']} at tick {stop['tick']}: {stop['reason']}")
    first = f"first chunk {summary['first_chunk_ms']:.0f} ms, before the clock"
    if latency:
        lines.append(f"Inference latency: p50 {latency['p50']:.0f} ms, p99 {latency['p99']:.0f} ms, max "
                     f"{latency['max']:.0f} ms over {latency['count']} chunks ({first}); starved ticks "
                     f"{summary['starved_ticks']}")
    else:
        lines.append(f"Inference latency: no chunk after the first ({first})")
    return lines


def write_run_report(path: Path, settings: dict, summary: dict, robot_facts: dict) -> None:
    report = {"settings": settings, "robot": robot_facts, "summary": summary}
    atomic_write_text(path, json.dumps(report, indent=2, default=str))
