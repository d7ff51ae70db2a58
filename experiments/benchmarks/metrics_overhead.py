"""What the diagnostics cost: the train step with every metric vs the same step with none.

    python experiments/benchmarks/metrics_overhead.py --config=experiments/configs/cartpole.py

Both programs are ``update.train_step`` with ``UpdateCounts(1, 1, 1)`` on the config's batch
shape (sequence or flat, random data for CartPole-shaped observations and actions).  The
"without" program returns only the new state, so XLA removes every metric computation (per-module
gradient norms, correlations, precision/recall counts, TD-error monitor, ...) as dead code; the
"with" program also returns the metric dict and copies it to the host, as the trainer does.
That XLA did drop the metric code is checked, not assumed: the two optimised programs' HLO
instruction counts, reductions and FLOPs are compared (``dead_code_removed`` is true only when
the "without" program is strictly smaller on all three).  Calls alternate (round-robin) so load
drift hits both; medians are reported.  Last output line: one JSON object.
"""

from __future__ import annotations

import functools
import json
import os
import re
import statistics
import sys
import time
import types

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from wm_jax import update
from wm_jax.schedule import UpdateCounts

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import random_batch, save_result  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/cartpole.py")
_REPEATS = flags.DEFINE_integer("repeats", 30, "timed calls per variant")


def program_size(compiled) -> dict:
    """Instructions, reductions and FLOPs of an optimised XLA program (all its computations)."""
    text = compiled.as_text()
    instructions = [
        line for line in text.splitlines() if re.match(r"\s+(ROOT )?%?[\w.-]+ = ", line)
    ]
    reductions = sum(1 for line in instructions if re.search(r"\breduce(-window)?\(", line))
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return {
        "hlo_instructions": len(instructions),
        "hlo_reductions": reductions,
        "flops": float((cost or {}).get("flops", float("nan"))),
    }


def main(argv):
    del argv
    config = _CONFIG.value
    spec = types.SimpleNamespace(obs_shape=(4,), obs_dtype=np.float32, action_dim=2, discrete=True)
    agent = update.make_agent(config, spec)
    counts = UpdateCounts(1, 1, 1)
    step = functools.partial(update.train_step, agent, counts=counts, real_mix=0.5)
    state = jax.jit(functools.partial(update.init_state, agent))(jax.random.PRNGKey(0))
    batch = jax.tree.map(jax.numpy.asarray, random_batch(config, spec, np.random.default_rng(0)))
    with_metrics = jax.jit(lambda s, b: step(s, b)).lower(state, batch).compile()
    without = jax.jit(lambda s, b: step(s, b)[0]).lower(state, batch).compile()
    size = {"with_metrics": program_size(with_metrics), "without_metrics": program_size(without)}
    removed = all(
        size["without_metrics"][k] < size["with_metrics"][k] for k in size["with_metrics"]
    )

    s_with, s_without = state, state
    s_with, m = with_metrics(s_with, batch)
    jax.device_get(m)
    s_without = jax.block_until_ready(without(s_without, batch))
    times = {"with_metrics": [], "without_metrics": []}
    for _ in range(_REPEATS.value):
        t0 = time.perf_counter()
        s_with, m = with_metrics(s_with, batch)
        jax.device_get(m)
        times["with_metrics"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        s_without = jax.block_until_ready(without(s_without, batch))
        times["without_metrics"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "batch": f"{config.batch_size}x{config.sequence_length}"
        if config.sequence_mode
        else str(config.batch_size),
        "metrics": len(m),
        "ms_with_metrics": round(1e3 * med["with_metrics"], 2),
        "ms_without_metrics": round(1e3 * med["without_metrics"], 2),
        "overhead": round(med["with_metrics"] / med["without_metrics"] - 1.0, 4),
        "program_size": size,
        "dead_code_removed": removed,
    }
    print(
        f"train step with {len(m)} metrics: {result['ms_with_metrics']} ms; without: "
        f"{result['ms_without_metrics']} ms; overhead {100 * result['overhead']:.1f} %"
    )
    for name, sz in size.items():
        print(
            f"  {name}: {sz['hlo_instructions']} HLO instructions, {sz['hlo_reductions']} "
            f"reductions, {sz['flops'] / 1e6:.1f} MFLOP"
        )
    if not removed:
        print("  WARNING: the program without metrics is not smaller: XLA kept the metric code")
    save_result("metrics_overhead", result)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
