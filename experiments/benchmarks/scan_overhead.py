"""The same train step as its own jitted call vs inside a ``lax.scan`` (the device loop's form).

    python experiments/benchmarks/scan_overhead.py --config=experiments/configs/catch.py

Builds the config's agent for its environment, a random sequence batch of the config's shape,
and times ``train_step`` (world model + actor + critic) called ``--steps`` times from Python
against one jitted ``lax.scan`` of ``--steps`` train steps; ``--repeats`` rounds, medians
reported.  On XLA:CPU the scanned step of the RSSM + CNN Catch config costs ~2x the separate
one (BUILD_NOTES.md, Known limits), which is why the device loop is slower than the host loop
there.  The last line is one JSON object.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from wm_jax.config import load_config_file, override
from wm_jax.envs import make_env_spec
from wm_jax.schedule import UpdateCounts
from wm_jax.types import Sequence
from wm_jax.update import init_state, make_agent, train_step

_CONFIG = flags.DEFINE_string("config", "experiments/configs/catch.py", "config file")
_STEPS = flags.DEFINE_integer("steps", 20, "train steps per timed call")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed rounds")
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "config field overrides x.y=value, e.g. --override=sequence_length=32"
)


def _apply_overrides(config, items):
    """``x.y=value`` strings, each value parsed as the type the field already has."""
    for item in items:
        path, _, text = item.partition("=")
        node = config
        *parents, leaf = path.split(".")
        for name in parents:
            node = node[name]
        old = node[leaf]
        if isinstance(old, bool):
            value = text.lower() in ("1", "true", "yes")
        else:
            value = type(old)(text) if old is not None else text
        override(config, **{path: value})
    return config


def _batch(config, spec, key):
    b, t = config.batch_size, config.sequence_length
    k = jax.random.split(key, 2)
    if jnp.issubdtype(spec.obs_dtype, jnp.integer):
        obs = (jax.random.uniform(k[0], (b, t + 1, *spec.obs_shape)) > 0.9).astype(spec.obs_dtype)
        obs = obs * 255
    else:
        obs = jax.random.normal(k[0], (b, t + 1, *spec.obs_shape))
    action = jax.nn.one_hot(jax.random.randint(k[1], (b, t), 0, spec.action_dim), spec.action_dim)
    zeros = jnp.zeros((b, t))
    return Sequence(obs=obs, action=action, reward=zeros, cont=zeros + 1, mask=zeros + 1)


def main(argv):
    del argv
    config = _apply_overrides(load_config_file(_CONFIG.value), _OVERRIDES.value)
    if not config.sequence_mode:
        raise SystemExit("this benchmark builds sequence batches: use a sequence_mode config")
    spec = make_env_spec(config.env_id, dict(config.env_kwargs))
    agent = make_agent(config, spec)
    state = init_state(agent, jax.random.PRNGKey(0))
    batch = _batch(config, spec, jax.random.PRNGKey(1))
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
    name = " ".join([_CONFIG.value, *_OVERRIDES.value])
    print(f"{name}: separate jit {med['separate'] * 1e3:.1f} ms/step, inside lax.scan "
          f"{med['scanned'] * 1e3:.1f} ms/step, ratio {ratio:.2f}")  # fmt: skip
    print(json.dumps({"config": _CONFIG.value, "overrides": _OVERRIDES.value,
                      "seconds_per_step": med, "ratio": ratio}))  # fmt: skip


if __name__ == "__main__":
    app.run(main)
