"""The A/B comparison BUILD_NOTES quotes (``experiments/benchmarks/compare_learning.py``): its U,
its window means and its "holds" on curves whose answers are known by hand."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
    # One copy per process (its absl flags, and common.py's --results_dir, are defined once):
    # common.py is shared with test_benchmark_results.py's copy under both names.
    name = "wm_jax_compare_learning"
    if name not in sys.modules:
        if "wm_jax_benchmarks_common" in sys.modules:
            sys.modules.setdefault("common", sys.modules["wm_jax_benchmarks_common"])
        path = os.path.join(ROOT, "experiments", "benchmarks", "compare_learning.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
        sys.modules.setdefault("wm_jax_benchmarks_common", sys.modules["common"])
    return sys.modules[name]


def _result(tmp_path, name, curves):
    path = tmp_path / name
    path.write_text(json.dumps({"eval_curves": curves}))
    return str(path)


def test_u_window_means_and_holding_seeds_match_a_hand_count(tmp_path):
    cmp = _module()
    base = _result(
        tmp_path,
        "base.json",
        {
            "0": [[5000, 100], [7500, 480], [10000, 390]],  # reached, then fell below 400
            "1": [[5000, 200], [7500, 300], [10000, 500]],  # reached at the last one: holds
        },
    )
    arm_a = _result(tmp_path, "a.json", {"0": [[5000, 0], [7500, 500], [10000, 450]]})
    arm_b = _result(
        tmp_path,
        "b.json",
        {"1": [[5000, 0], [7500, 100], [10000, 200]], "7": [[5000, 1], [7500, 1], [10000, 1]]},
    )
    out = cmp.compare([base], [arm_a, arm_b], 7500, 10000, 475.0, 400.0)
    # Seed 7 is the arm's only: paired seeds drop it.
    assert out["arm"]["seeds"] == ["0", "1"]
    assert out["base"]["window_means"] == {"0": 435.0, "1": 400.0}
    assert out["arm"]["window_means"] == {"0": 475.0, "1": 150.0}
    # 475 beats 435 and 400; 150 beats neither.
    assert out["u_arm_vs_base"] == 2.0 and out["u_max"] == 4
    assert out["base"]["holds"] == {"0": False, "1": True}
    assert out["arm"]["holds"] == {"0": True, "1": None}
    assert out["base"]["median_curve"] == [(5000, 150.0), (7500, 390.0), (10000, 445.0)]
    assert cmp.mann_whitney_u([1.0, 2.0, 3.0], [2.0]) == 1.5  # a tie counts half


def test_arms_without_a_common_seed_are_refused_unless_unpaired(tmp_path):
    cmp = _module()
    base = _result(tmp_path, "base.json", {"0": [[5000, 10]]})
    arm = _result(tmp_path, "arm.json", {"1": [[5000, 20]]})
    with pytest.raises(ValueError, match="share no seed"):
        cmp.compare([base], [arm], 5000, 5000, 475.0, 400.0)
    assert cmp.compare([base], [arm], 5000, 5000, 475.0, 400.0, paired=False)["u_arm_vs_base"] == 1
