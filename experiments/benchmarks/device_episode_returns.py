"""What keeping episode returns costs the on-device loop (``critic.real_targets="episode"``).

    python experiments/benchmarks/device_episode_returns.py
    python experiments/benchmarks/device_episode_returns.py \
        --config=experiments/configs/cartpole_rssm.py

With episode targets the device ring walks back through every episode that terminates
(``wm_jax.replay_device._backfill_returns``, a ``lax.while_loop`` as long as the episode).  This
times the device loop's compiled segments with ``"lambda"`` and ``"episode"`` on the config's
network and ``gymnax:<its env>``, alternated round by round: collecting (random actions, no
updates: terminations every ~20 steps on CartPole, the write-back's worst case) and training
(the config's update counts after its warmup).  Medians of ``--repeats`` rounds, ms per
iteration (one vector step, plus its train steps when training).  The last line is one JSON
object.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from wm_jax.config import validate
from wm_jax.device_segment import DeviceLoop
from wm_jax.schedule import update_counts

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save_result  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/cartpole.py")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed rounds (each target once per round)")
_ACT = flags.DEFINE_integer("act_iterations", 500, "vector steps per collecting segment")
_TRAIN = flags.DEFINE_integer("train_iterations", 100, "iterations per training segment")


def main(argv):
    del argv
    loops, states = {}, {}
    for targets in ("lambda", "episode"):
        c = _CONFIG.value.copy_and_resolve_references()
        if not c.env_id.startswith("gymnax:"):
            c.env_id = "gymnax:" + c.env_id
        c.loop, c.critic.real_targets = "device", targets
        loops[targets] = DeviceLoop(validate(c))
        states[targets] = loops[targets].init(0)
    full = max(c.schedule.transition_steps, c.schedule.warmup_steps)
    parts = (("collect", None, True, _ACT.value), ("train", "counts", False, _TRAIN.value))
    times: dict[str, dict[str, list[float]]] = {}
    for _ in range(_REPEATS.value):
        for targets, loop in loops.items():
            for part, counts, prefill, n in parts:
                counts = update_counts(full, loop.config.schedule) if counts else None
                fn = loop.segment(n, counts, prefill, 1)
                ls, _ = fn(states[targets])  # compiles on the first round; warms the rest
                jax.block_until_ready(ls)
                start = time.perf_counter()
                ls, _ = fn(ls)
                jax.block_until_ready(ls)
                times.setdefault(part, {}).setdefault(targets, []).append(
                    (time.perf_counter() - start) / n * 1e3
                )
                states[targets] = ls
    ms = {p: {t: statistics.median(v) for t, v in d.items()} for p, d in times.items()}
    ratio = {p: d["episode"] / d["lambda"] for p, d in ms.items()}
    print("| segment | lambda ms/iteration | episode ms/iteration | episode / lambda |")
    print("|---|---|---|---|")
    for p, d in ms.items():
        print(f"| {p} | {d['lambda']:.4f} | {d['episode']:.4f} | {ratio[p]:.2f} |")
    result = {
        "config": config_flags.get_config_filename(flags.FLAGS["config"]),
        "overrides": config_flags.get_override_values(flags.FLAGS["config"]),
        "ms_per_iteration": ms,
        "rounds": times,
        "ratio_episode_vs_lambda": ratio,
    }
    save_result("device_episode_returns", result)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
