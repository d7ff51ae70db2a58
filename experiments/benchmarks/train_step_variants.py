"""A config's train step under config variants, timed round-robin in one process.

    python experiments/benchmarks/train_step_variants.py --config=experiments/configs/cartpole.py \
        --variant=layer-f32: --variant=rms-bf16:model.norm=rms,precision=bfloat16

Each ``--variant=NAME:PATH=VALUE,...`` is the config with those overrides (an empty list is the
config as it is); the pseudo-override ``counts=W/A/C`` sets the variant's update counts (default
``--counts``: one update of each kind, as the figures in BUILD_NOTES were measured), so
``counts=1/0/0`` times one world-model update alone; ``xla_opt=N`` compiles the variant at XLA's
backend optimisation level N (LLVM's -O level; XLA's default is 2).  Every variant's
``update.train_step`` is compiled on the config's batch shape (random CartPole-shaped data, as
``metrics_overhead.py``)
and fed its own returned state; one call of each per round, so load drift hits all alike, and
medians are reported with the speed-up over the first variant, and each variant's trace and
XLA compile seconds (compiled one after the other in this process: compare them on a cold
cache, ``JAX_COMPILATION_CACHE_DIR`` unset).  This is how a speed knob
(normalisation, precision, widths) is measured on the shape a real run trains on, where the
update benchmark (``update_throughput.py``) uses the seeds' sizes.  Last output line: one JSON
object.
"""

from __future__ import annotations

import ast
import functools
import json
import os
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
_VARIANTS = flags.DEFINE_multi_string(
    "variant",
    ["float32:", "bfloat16:precision=bfloat16"],
    "NAME:PATH=VALUE,... (overrides of the config; the first variant is the baseline)",
)
_REPEATS = flags.DEFINE_integer("repeats", 30, "timed calls per variant")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed calls per variant after compilation")
_COUNTS = flags.DEFINE_string(
    "counts", "1/1/1", "W/A/C: world-model, actor and critic updates per train step"
)


def _parse(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        path, _, value = item.partition("=")
        try:
            overrides[path] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[path] = value
    return name, overrides


def _counts(text: str) -> UpdateCounts:
    return UpdateCounts(*(int(n) for n in str(text).split("/")))


def _apply(config, overrides: dict):
    config = config.copy_and_resolve_references()
    for path, value in overrides.items():
        node = config
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise ValueError(f"--variant: {path!r} is not a config field")
        node[leaf] = value
    return config


def main(argv):
    del argv
    from wm_jax import _allocator

    _allocator.tune()  # the CLI's malloc settings (re-executes once)
    spec = types.SimpleNamespace(obs_shape=(4,), obs_dtype=np.float32, action_dim=2, discrete=True)
    variants = {}
    for text in _VARIANTS.value:
        name, overrides = _parse(text)
        counts = _counts(overrides.pop("counts", _COUNTS.value))
        level = overrides.pop("xla_opt", None)  # XLA's backend optimisation level (default 2)
        options = None if level is None else {"xla_backend_optimization_level": int(level)}
        config = _apply(_CONFIG.value, overrides)
        agent = update.make_agent(config, spec)
        step = functools.partial(update.train_step, agent, counts=counts)
        state = jax.jit(functools.partial(update.init_state, agent))(jax.random.PRNGKey(0))
        batch = jax.tree.map(
            jax.numpy.asarray, random_batch(config, spec, np.random.default_rng(0))
        )
        start = time.perf_counter()
        lowered = jax.jit(lambda s, b, step=step: step(s, b, real_mix=0.5)).lower(state, batch)
        traced = time.perf_counter()
        fn = lowered.compile(compiler_options=options)
        variants[name] = {
            "fn": fn,
            "state": state,
            "batch": batch,
            "over": overrides,
            "counts": "/".join(map(str, counts)),
            "xla_opt": None if level is None else int(level),
            # Tracing + lowering, then XLA's compile (the part the kernel count drives).
            "trace_s": traced - start,
            "compile_s": time.perf_counter() - traced,
        }
    times = {name: [] for name in variants}
    for i in range(_WARMUP.value + _REPEATS.value):
        for name, v in variants.items():
            start = time.perf_counter()
            v["state"], metrics = v["fn"](v["state"], v["batch"])
            jax.block_until_ready((v["state"], metrics))
            if i >= _WARMUP.value:
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    base = next(iter(med.values()))
    rows = [
        {
            "variant": name,
            "overrides": variants[name]["over"],
            "counts": variants[name]["counts"],
            "xla_opt": variants[name]["xla_opt"],
            "ms_per_step": round(1e3 * m, 3),
            "speedup_vs_first": round(base / m, 3),
            "trace_s": round(variants[name]["trace_s"], 2),
            "compile_s": round(variants[name]["compile_s"], 2),
        }
        for name, m in med.items()
    ]
    for row in rows:
        print(
            f"{row['variant']:>16s}  {row['ms_per_step']:8.2f} ms  {row['speedup_vs_first']:.2f}x"
            f"  trace {row['trace_s']:.1f} s  compile {row['compile_s']:.1f} s"
        )
    result = {"benchmark": "train_step_variants", "repeats": _REPEATS.value, "variants": rows}
    save_result("train_step_variants", result)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
