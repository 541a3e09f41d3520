"""The figures of a closed-loop evaluation (success rate with its Wilson interval, unsafe episodes, errors, times),
their console lines, and the report files: report.json (settings, summary, every episode) and episodes.csv (a row
per episode).
"""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from episode_format.atomic import atomic_write_text
from evaluation.rollout import EpisodeResult

Z_95 = 1.959964


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sensible at 0/N and N/N, unlike p +- z*se)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def summarize(results: list[EpisodeResult]) -> dict:
    n, k = len(results), sum(r.success for r in results)
    lo, hi = wilson_interval(k, n)
    deepest = int(np.argmax([r.max_penetration_mm for r in results]))
    tip = [r.final_tip_error_mm for r in results]
    axis = [r.final_axis_error_deg for r in results]
    times = [r.time_to_success_s for r in results if r.success]
    return {
        "episodes": n, "successes": k, "success_rate": k / n, "success_rate_ci95": [lo, hi],
        "unsafe": sum(r.unsafe for r in results),  # episodes in which the needle entered the eye beside the trocar
        "max_penetration_mm": {"worst": results[deepest].max_penetration_mm, "worst_episode": results[deepest].episode},
        "tip_error_mm": {"mean": float(np.mean(tip)), "worst": float(np.max(tip)),
                         "worst_episode": results[int(np.argmax(tip))].episode},
        "axis_error_deg": {"mean": float(np.mean(axis)), "worst": float(np.max(axis)),
                           "worst_episode": results[int(np.argmax(axis))].episode},
        "time_to_success_s": {"mean": float(np.mean(times)), "min": float(np.min(times)), "max": float(np.max(times))}
        if times else None,
        "wall_seconds_per_episode": float(np.mean([r.wall_s for r in results])),
    }


def summary_lines(summary: dict) -> list[str]:
    tip, axis, times = summary["tip_error_mm"], summary["axis_error_deg"], summary["time_to_success_s"]
    lo, hi = summary["success_rate_ci95"]
    k, n = summary["successes"], summary["episodes"]
    unsafe, deepest = summary["unsafe"], summary["max_penetration_mm"]
    return [
        f"Final tip error:  mean {tip['mean']:.3f} mm, worst {tip['worst']:.3f} mm (episode {tip['worst_episode']})",
        f"Final axis error: mean {axis['mean']:.2f} deg, worst {axis['worst']:.2f} deg (episode {axis['worst_episode']})",
        f"Time to success:  mean {times['mean']:.2f} s (min {times['min']:.2f}, max {times['max']:.2f}; the 1 s hold "
        f"included) over {k} successes" if times else "Time to success:  no successful episode",
        f"Wall time: {summary['wall_seconds_per_episode']:.1f} s per episode",
        f"Unsafe: {unsafe}/{n}" + (f" (the needle entered the eye beside the trocar; never a success; deepest "
                                   f"{deepest['worst']:.2f} mm, episode {deepest['worst_episode']})" if unsafe else ""),
        f"Success rate: {k}/{n} ({100 * k / n:.1f} %, 95 % CI {100 * lo:.1f}-{100 * hi:.1f} %)",
    ]


def write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def write_report(output_dir: Path, settings: dict, summary: dict, rows: list[dict]) -> None:
    """report.json (settings, summary, every episode) and episodes.csv (a row per episode)."""
    report = {"settings": settings, "summary": summary, "episodes": rows}
    atomic_write_text(output_dir / "report.json", json.dumps(report, indent=2, default=str))
    write_csv(output_dir / "episodes.csv", rows)
