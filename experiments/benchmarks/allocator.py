"""Allocators against the train step: which one the launchers should use.

    python experiments/benchmarks/allocator.py --rounds=3

Each setting (``--setting=NAME=TUNABLES``: glibc's malloc with those ``GLIBC_TUNABLES``, empty for
its defaults; ``--setting=NAME=mimalloc``: the ``cmeel-mimalloc`` wheel's library preloaded with
:data:`wm_jax._allocator.MIMALLOC_OPTIONS`) runs in its own child process, round-robin over
``--rounds`` so the machine's drift hits all alike.  A child times the train step
(``UpdateCounts(1, 1, 1)``, its returned state fed back) of the README config
(``experiments/configs/cartpole.py`` on a CartPole-shaped batch) and of the seeds' sizes
(features 256, states 64, hidden 256, 3-D observations, 1-D continuous action, flat batch) at
``--batch_sizes``, with the minor page faults and system CPU time per call.  An allocator is
process-wide and fixed at start, hence a process per setting (``glibc`` is
:data:`wm_jax._allocator.TUNABLES`, the launchers' fallback; ``mimalloc`` what they use where the
wheel is installed); the children skip :mod:`wm_jax._allocator`'s own re-execution (the opt-out
is set).  Prints per setting the medians over rounds and the speed-up over the first setting;
last line: one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import random_batch, save_result  # noqa: E402

from wm_jax import _allocator  # noqa: E402

_SETTINGS = flags.DEFINE_multi_string(
    "setting",
    [
        "none=",
        # The launchers' settings until 2026-12-06: every thread on one arena.
        "one_arena=glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
        "glibc.malloc.trim_threshold=4294967296",
        f"glibc={_allocator.TUNABLES}",
        "mimalloc=mimalloc",
    ],
    "NAME=GLIBC_TUNABLES (empty: glibc's defaults) or NAME=mimalloc; the first is the baseline",
)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "child processes per setting, round-robin")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "1024"], "seeds'-size batches to time")
_REPEATS = flags.DEFINE_integer("repeats", 60, "timed CartPole calls per child")
_CHILD = flags.DEFINE_bool("child", False, "internal: time the steps in this process")


def _time_step(agent, batch, calls: int) -> dict:
    import functools
    import resource
    import time

    import jax

    from wm_jax import update
    from wm_jax.schedule import UpdateCounts

    step = jax.jit(functools.partial(update.train_step, agent), static_argnums=(2,))
    holder = {"state": jax.jit(functools.partial(update.init_state, agent))(jax.random.PRNGKey(0))}

    def call():
        holder["state"], metrics = step(holder["state"], batch, UpdateCounts(1, 1, 1), 0.5)
        jax.block_until_ready((holder["state"], metrics))

    for _ in range(3):
        call()
    times, before = [], resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "ms": 1e3 * statistics.median(times),
        "faults_per_call": (after.ru_minflt - before.ru_minflt) / calls,
        "sys_ms_per_call": 1e3 * (after.ru_stime - before.ru_stime) / calls,
    }


def _child() -> dict:
    import types

    import jax
    import jax.numpy as jnp
    import numpy as np

    from wm_jax import update
    from wm_jax.config import get_config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.join(root, "experiments", "configs"))
    import cartpole

    out = {}
    config = cartpole.get_config()
    spec = types.SimpleNamespace(obs_shape=(4,), obs_dtype=np.float32, action_dim=2, discrete=True)
    batch = jax.tree.map(jnp.asarray, random_batch(config, spec, np.random.default_rng(0)))
    out["cartpole"] = _time_step(update.make_agent(config, spec), batch, _REPEATS.value)
    config = get_config()
    config.model.feature_dim, config.model.state_dim, config.model.hidden_dim = 256, 64, 256
    spec = types.SimpleNamespace(obs_shape=(3,), obs_dtype=np.float32, action_dim=1, discrete=False)
    agent = update.make_agent(config, spec)
    for size in map(int, _BATCH_SIZES.value):
        config.batch_size = size  # a flat batch: the base config is not in sequence mode
        batch = jax.tree.map(jnp.asarray, random_batch(config, spec, np.random.default_rng(0)))
        # ~1 s of calls at any size (at least 4).
        out[f"seeds_b{size}"] = _time_step(agent, batch, max(4, _REPEATS.value * 64 // size // 2))
    return out


def main(argv):
    del argv
    if _CHILD.value:
        print(json.dumps(_child()))
        return
    settings = dict(item.partition("=")[::2] for item in _SETTINGS.value)
    runs = {name: [] for name in settings}
    for round_ in range(_ROUNDS.value):
        for name, tunables in settings.items():
            env = {
                k: v
                for k, v in os.environ.items()
                if k not in ("GLIBC_TUNABLES", "LD_PRELOAD", *_allocator.MIMALLOC_OPTIONS)
            }
            if tunables == "mimalloc":
                library = _allocator.mimalloc_library()
                if library is None:
                    raise SystemExit("setting mimalloc: pip install cmeel-mimalloc")
                _allocator.preload_mimalloc(env, library)
            elif tunables:
                env["GLIBC_TUNABLES"] = tunables
            env["WM_JAX_NO_ALLOCATOR_TUNING"] = "1"
            args = [a for a in sys.argv[1:] if not a.startswith("--setting")]
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", *args],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1} {name}: {runs[name][-1]}", flush=True)
    cases = list(runs[next(iter(runs))][0])
    summary = {}
    for name in settings:
        summary[name] = {
            case: {
                key: round(statistics.median(r[case][key] for r in runs[name]), 2)
                for key in ("ms", "faults_per_call", "sys_ms_per_call")
            }
            for case in cases
        }
    base = summary[next(iter(summary))]
    for name, row in summary.items():
        for case in cases:
            row[case]["speedup_vs_first"] = round(base[case]["ms"] / row[case]["ms"], 3)
        print(
            f"{name:>14s}  "
            + "  ".join(
                f"{case} {r['ms']:.1f} ms ({r['speedup_vs_first']:.2f}x,"
                f" {r['faults_per_call']:.0f} faults, {r['sys_ms_per_call']:.1f} ms sys)"
                for case, r in row.items()
            )
        )
    result = {
        "benchmark": "allocator",
        "rounds": _ROUNDS.value,
        "settings": settings,
        "medians": summary,
        "runs": runs,
    }
    save_result("allocator", result)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
