"""Host loop vs on-device loop, vmapped seeds, and how an update's cost grows with its work.

    python experiments/benchmarks/device_loop.py                 # everything, CartPole config
    python experiments/benchmarks/device_loop.py --parts=seeds   # one part

Parts (all on the CartPole config's network, medians of ``--repeats`` timed calls after a
warm-up call that compiles):

* ``loops``: env steps/s and updates/s of the host loop (gymnasium ``CartPole-v1``,
  :class:`wm_jax.trainer.Trainer`) and the device loop (``gymnax:CartPole-v1``,
  :mod:`wm_jax.device_loop`) with the same config, in two regimes: collecting (random actions,
  no updates: the loop's own overhead) and training (one train step per vector step of 4 envs,
  the config's train ratio).  Also the device loop collecting with 256 envs.
* ``seeds``: wall time of the device loop's training segment for 1 seed and for
  ``--num_seeds`` seeds vmapped in one program.
* ``scaling``: seconds per full update (world model + actor + critic) as batch size, imagination
  horizon and sequence length double.

Prints a Markdown table per part and, last, one JSON line with every figure.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import random_batch, save_result  # noqa: E402

from experiments.configs.cartpole import get_config  # noqa: E402
from wm_jax.config import override  # noqa: E402
from wm_jax.device_loop import DeviceLoop  # noqa: E402
from wm_jax.schedule import UpdateCounts  # noqa: E402

_PARTS = flags.DEFINE_list("parts", ["loops", "seeds", "scaling"], "parts to run")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per figure")
_ITERATIONS = flags.DEFINE_integer("iterations", 100, "loop iterations per timed call")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 8, "seeds vmapped in the seeds part")

FULL = UpdateCounts(1, 1, 1)


def _config(**overrides):
    c = get_config()
    c.checkpoint_every = 0
    c.eval_every = 0
    c.report = False
    c.log_every = 10**9
    c.diagnostics.open_loop_every = 0
    c.prefill_steps = 1_000
    c.schedule.warmup_steps = 0
    c.schedule.transition_steps = 0
    return override(c, **overrides)


def _median_time(fn, repeats: int) -> float:
    fn()  # compile + warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def host_rates(c, iterations: int, repeats: int) -> dict[str, float]:
    """Env steps/s of the host loop while collecting (prefill) and while training."""
    from wm_jax.trainer import Trainer

    with tempfile.TemporaryDirectory() as workdir:
        c = c.copy_and_resolve_references()
        c.prefill_steps = c.num_envs * iterations * (repeats + 1) + 1_000
        trainer = Trainer(c, workdir)
        try:
            steps = c.num_envs * iterations
            collect = _median_time(lambda: trainer.run(stop_at=trainer.env_step + steps), repeats)
            trainer.run(stop_at=c.prefill_steps)
            updates_before = trainer.updates
            train = _median_time(lambda: trainer.run(stop_at=trainer.env_step + steps), repeats)
            per_call = (trainer.updates - updates_before) / (repeats + 1)
        finally:
            trainer.close()
    return {
        "collect_env_steps_per_s": steps / collect,
        "train_env_steps_per_s": steps / train,
        "train_updates_per_s": per_call / train,
    }


def device_rates(c, iterations: int, repeats: int, num_seeds: int = 1, train: bool = True):
    loop = DeviceLoop(c)
    states = [loop.init(c.seed + i) for i in range(num_seeds)]
    ls = states[0] if num_seeds == 1 else jax.tree.map(lambda *xs: jax.numpy.stack(xs), *states)
    per_call = iterations * loop.cadence.env_repeat * c.num_envs
    holder = {"ls": ls}

    def call(fn):
        holder["ls"], out = fn(holder["ls"])
        jax.block_until_ready(out)

    collect_fn = loop.segment(iterations, None, True, num_seeds)
    collect = _median_time(lambda: call(collect_fn), repeats)
    out = {"collect_env_steps_per_s": per_call * num_seeds / collect, "collect_s": collect}
    if train:
        # The replay holds (repeats + 1) collect calls' worth of steps: enough for any window.
        train_fn = loop.segment(iterations, FULL, False, num_seeds)
        seconds = _median_time(lambda: call(train_fn), repeats)
        out["train_env_steps_per_s"] = per_call * num_seeds / seconds
        out["train_updates_per_s"] = iterations * loop.cadence.updates * num_seeds / seconds
        out["train_s"] = seconds
    return out


def part_loops(repeats: int, iterations: int) -> dict:
    c = _config()
    host = host_rates(c, iterations, repeats)
    device = device_rates(_config(env_id="gymnax:CartPole-v1"), iterations, repeats)
    wide = device_rates(
        _config(env_id="gymnax:CartPole-v1", num_envs=256, train_ratio=1 / 256),
        iterations,
        repeats,
        train=False,
    )
    print("\n### Host loop vs device loop (CartPole config network, 4 envs)\n")
    print("| regime | host env steps/s | device env steps/s | ratio |")
    print("|---|---|---|---|")
    for regime in ("collect", "train"):
        h, d = host[f"{regime}_env_steps_per_s"], device[f"{regime}_env_steps_per_s"]
        print(f"| {regime} | {h:.0f} | {d:.0f} | {d / h:.1f}× |")
    h, d = host["train_updates_per_s"], device["train_updates_per_s"]
    print(f"| train (updates/s) | {h:.1f} | {d:.1f} | {d / h:.1f}× |")
    w = wide["collect_env_steps_per_s"]
    print(
        f"| collect, device with 256 envs | {host['collect_env_steps_per_s']:.0f} (4 envs) | "
        f"{w:.0f} | {w / host['collect_env_steps_per_s']:.0f}× |"
    )
    return {"host": host, "device": device, "device_256_envs": wide}


def part_seeds(repeats: int, iterations: int, num_seeds: int) -> dict:
    c = _config(env_id="gymnax:CartPole-v1")
    one = device_rates(c, iterations, repeats, 1)
    many = device_rates(c, iterations, repeats, num_seeds)
    ratio = many["train_s"] / one["train_s"]
    print(f"\n### {num_seeds} vmapped seeds vs 1 (device loop, training segment)\n")
    print("| seeds | wall per segment (s) | env steps/s (all seeds) | ratio to 1 seed |")
    print("|---|---|---|---|")
    print(f"| 1 | {one['train_s']:.3f} | {one['train_env_steps_per_s']:.0f} | 1.0× |")
    print(
        f"| {num_seeds} | {many['train_s']:.3f} | {many['train_env_steps_per_s']:.0f} | "
        f"{ratio:.2f}× |"
    )
    return {"one": one, "many": many, "num_seeds": num_seeds, "wall_ratio": ratio}


def _update_seconds(c, repeats: int) -> float:
    from wm_jax.envs import make_env_spec
    from wm_jax.update import make_agent, make_steps

    spec = make_env_spec("CartPole-v1")
    steps = make_steps(make_agent(c, spec))
    batch = jax.device_put(random_batch(c, spec, np.random.default_rng(0)))
    holder = {"state": steps.init(jax.random.PRNGKey(0))}

    def call():
        holder["state"], metrics = steps.train_step(holder["state"], batch, FULL, 0.5)
        jax.block_until_ready(metrics)

    return _median_time(call, repeats)


def part_update_scaling(repeats: int) -> dict:
    base = {"batch_size": 16, "sequence_length": 16, "imagination.horizon": 15}
    rows = []
    for name, values in (
        ("batch_size", (8, 16, 32, 64)),
        ("imagination.horizon", (8, 15, 30, 60)),
        ("sequence_length", (8, 16, 32, 64)),
    ):
        for value in values:
            overrides = dict(base, **{name: value})
            # Imagination starts follow the batch (num_starts = 0: every replayed state).
            c = _config(**overrides, **{"imagination.num_starts": 0})
            rows.append((name, value, _update_seconds(c, repeats)))
    print("\n### Seconds per full update as the work grows (CartPole network, sequence mode)\n")
    print("| varied | value | s/update | × the smallest |")
    print("|---|---|---|---|")
    smallest: dict[str, float] = {}
    for name, value, seconds in rows:
        smallest.setdefault(name, seconds)
        print(f"| {name} | {value} | {seconds:.4f} | {seconds / smallest[name]:.2f} |")
    return {f"{n}={v}": s for n, v, s in rows}


def main(argv):
    del argv
    results = {"device": str(jax.devices()[0]), "jax": jax.__version__}
    if "loops" in _PARTS.value:
        results["loops"] = part_loops(_REPEATS.value, _ITERATIONS.value)
    if "seeds" in _PARTS.value:
        results["seeds"] = part_seeds(_REPEATS.value, _ITERATIONS.value, _NUM_SEEDS.value)
    if "scaling" in _PARTS.value:
        results["scaling"] = part_update_scaling(_REPEATS.value)
    save_result("device_loop", results)
    print(json.dumps(results))


if __name__ == "__main__":
    app.run(main)
