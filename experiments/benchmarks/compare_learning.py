"""Compares two arms of a learning A/B from ``learning.py``'s result files (issue 19): the
figures BUILD_NOTES quotes for every arm, from one command anyone can rerun.

    B=experiments/results/learning/2026-12-06-amd-epyc-cartpole-rssm-30k
    python experiments/benchmarks/compare_learning.py --window=12500,30000 \\
        --base=$B-explore-corr-0-9.json,$B-seeds345-explore-corr-0-9.json --arm=<the arm's files>

Each side is one or more result files (merged by seed: a later file's seed replaces an earlier
one's).  For each side it prints the median curve, each seed's mean evaluation return over
``--window`` (inclusive env steps) and, where the curves run past ``--threshold``, how many
seeds *hold*: every evaluation after a seed's first one ≥ ``--threshold`` stays ≥ ``--floor``
(issue 19's CartPole target: 475 then 400).  Between the sides: the Mann-Whitney U of the arm's
seeds' window means against the base's (pairs the arm wins, ties counted half; with 6 seeds
each, 36 is every pair and 18 is level; two-sided p < 0.05 needs U ≤ 5 or ≥ 31), computed only
over the seeds both sides ran when ``--paired_seeds`` (the default).  The last line is JSON,
kept as ``experiments/results/compare_learning/<date>-<cpu>.json`` (``--results_dir=''`` keeps
nothing).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save_result  # noqa: E402

BASE = flags.DEFINE_list("base", None, "result file(s) of the base arm", required=True)
ARM = flags.DEFINE_list("arm", None, "result file(s) of the arm compared with it", required=True)
WINDOW = flags.DEFINE_list("window", ["7500", "12500"], "first,last env step of the window")
THRESHOLD = flags.DEFINE_float("threshold", 475.0, "return a seed first reaches")
FLOOR = flags.DEFINE_float("floor", 400.0, "return every later evaluation must keep to hold")
PAIRED = flags.DEFINE_bool("paired_seeds", True, "compare only the seeds both arms ran")


def load_curves(paths: list[str]) -> dict[str, list[tuple[int, float]]]:
    """seed -> [(env_step, eval_return), ...] merged over ``paths`` (later files win)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        for seed, curve in result["eval_curves"].items():
            curves[str(seed)] = [(int(step), float(ret)) for step, ret in curve]
    return curves


def window_mean(curve, first: int, last: int) -> float:
    returns = [ret for step, ret in curve if first <= step <= last]
    if not returns:
        raise ValueError(f"no evaluation between env steps {first} and {last}")
    return float(np.mean(returns))


def holds(curve, threshold: float, floor: float) -> bool | None:
    """True if every evaluation after the first ≥ threshold is ≥ floor; None if never reached."""
    reached = [k for k, (_, ret) in enumerate(curve) if ret >= threshold]
    if not reached:
        return None
    return all(ret >= floor for _, ret in curve[reached[0] + 1 :])


def mann_whitney_u(arm: list[float], base: list[float]) -> float:
    """Pairs (a, b) with a > b, ties counted half."""
    return float(sum((a > b) + 0.5 * (a == b) for a in arm for b in base))


def median_curve(curves) -> list[tuple[int, float]]:
    steps = sorted({step for curve in curves.values() for step, _ in curve})
    out = []
    for step in steps:
        at = [ret for curve in curves.values() for s, ret in curve if s == step]
        if len(at) == len(curves):  # only steps every seed evaluated
            out.append((step, float(np.median(at))))
    return out


def summarise(curves, first, last, threshold, floor) -> dict:
    return {
        "seeds": sorted(curves, key=int),
        "median_curve": median_curve(curves),
        "window_means": {s: window_mean(c, first, last) for s, c in curves.items()},
        "holds": {s: holds(c, threshold, floor) for s, c in curves.items()},
    }


def compare(base_paths, arm_paths, first, last, threshold, floor, paired=True) -> dict:
    base, arm = load_curves(base_paths), load_curves(arm_paths)
    if paired:
        common = set(base) & set(arm)
        if not common:
            raise ValueError("the two arms share no seed; pass --nopaired_seeds to compare anyway")
        base = {s: c for s, c in base.items() if s in common}
        arm = {s: c for s, c in arm.items() if s in common}
    out = {
        "window": [first, last],
        "threshold": threshold,
        "floor": floor,
        "base": summarise(base, first, last, threshold, floor),
        "arm": summarise(arm, first, last, threshold, floor),
    }
    out["u_arm_vs_base"] = mann_whitney_u(
        list(out["arm"]["window_means"].values()), list(out["base"]["window_means"].values())
    )
    out["u_max"] = len(arm) * len(base)
    return out


def _print_side(name: str, side: dict) -> None:
    curve = " ".join(f"{step / 1000:g}k:{ret:.0f}" for step, ret in side["median_curve"])
    print(f"{name}: median curve {curve}")
    means = " ".join(f"{side['window_means'][s]:.0f}" for s in side["seeds"])
    print(f"{name}: seeds {' '.join(side['seeds'])}; window means {means}")
    held = [s for s in side["seeds"] if side["holds"][s]]
    reached = [s for s in side["seeds"] if side["holds"][s] is not None]
    print(f"{name}: {len(held)} of {len(side['seeds'])} seeds hold ({len(reached)} reached)")


def main(argv):
    del argv
    first, last = (int(float(x)) for x in WINDOW.value)
    out = compare(BASE.value, ARM.value, first, last, THRESHOLD.value, FLOOR.value, PAIRED.value)
    _print_side("base", out["base"])
    _print_side("arm", out["arm"])
    print(f"U (arm vs base, window {first}-{last}): {out['u_arm_vs_base']:g} of {out['u_max']}")
    out["base_files"], out["arm_files"] = BASE.value, ARM.value
    sys.stdout.flush()
    save_result("compare_learning", out)
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
