"""The same train step as its own jitted call vs inside a ``lax.scan`` (the device loop's form).

    python experiments/benchmarks/scan_overhead.py --config=experiments/configs/catch.py
    python experiments/benchmarks/scan_overhead.py \
        --config=experiments/configs/breakout_minatar.py --config.sequence_length=32

Builds the config's agent for its environment, a random batch of the config's layout,
and times ``train_step`` (world model + actor + critic) called ``--steps`` times from Python
against one jitted ``lax.scan`` of ``--steps`` train steps; ``--repeats`` rounds, medians
reported.  On XLA:CPU the scanned step of the RSSM + CNN Catch config costs ~2x the separate
one (BUILD_NOTES.md, Known limits), which is why the device loop is slower than the host loop
there.  The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from wm_jax.envs import make_env_spec
from wm_jax.schedule import UpdateCounts
from wm_jax.update import init_state, make_agent, train_step

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import random_batch, save_result  # noqa: E402

# --config=FILE --config.x=y, as for wm_jax.train.
_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/catch.py")
_STEPS = flags.DEFINE_integer("steps", 20, "train steps per timed call")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed rounds")


def main(argv):
    del argv
    config = _CONFIG.value
    spec = make_env_spec(config.env_id, dict(config.env_kwargs))
    agent = make_agent(config, spec)
    state = init_state(agent, jax.random.PRNGKey(0))
    batch = jax.device_put(random_batch(config, spec, np.random.default_rng(1)))
    counts, n = UpdateCounts(1, 1, 1), _STEPS.value

    separate = jax.jit(lambda s: train_step(agent, s, batch, counts, 0.5)[0])
    scanned = jax.jit(
        lambda s: jax.lax.scan(
            lambda c, _: (train_step(agent, c, batch, counts, 0.5)[0], None), s, None, n
        )[0]
    )
    jax.block_until_ready(separate(state))
    jax.block_until_ready(scanned(state))
    times = {"separate": [], "scanned": []}
    for _ in range(_REPEATS.value):
        start, s = time.perf_counter(), state
        for _ in range(n):
            s = separate(s)
        jax.block_until_ready(s)
        times["separate"].append((time.perf_counter() - start) / n)
        start = time.perf_counter()
        jax.block_until_ready(scanned(state))
        times["scanned"].append((time.perf_counter() - start) / n)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["scanned"] / med["separate"]
    path = config_flags.get_config_filename(flags.FLAGS["config"])
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    name = " ".join([path, *(f"{k}={v}" for k, v in overrides.items())])
    print(f"{name}: separate jit {med['separate'] * 1e3:.1f} ms/step, inside lax.scan "
          f"{med['scanned'] * 1e3:.1f} ms/step, ratio {ratio:.2f}")  # fmt: skip
    result = {"config": path, "overrides": overrides, "seconds_per_step": med, "ratio": ratio}
    save_result("scan_overhead", result)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
