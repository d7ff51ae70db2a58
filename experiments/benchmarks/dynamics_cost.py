"""What each dynamics model costs per update, on the CartPole configs (issue 5).

    python experiments/benchmarks/dynamics_cost.py   # cartpole.py, _transformer.py, _rssm.py

For each config: a random CartPole-shaped sequence batch (``batch_size × sequence_length``, the
config's), one jit of ``train_step`` with ``UpdateCounts(1, 1, 1)`` (world model + actor +
critic) and of the world-model and actor updates alone, called round-robin across configs (one
call of each per round, so drifting load on a shared machine hits all alike), medians reported.
Also the dynamics' parameter count (for the RSSM its core and its posterior, which fills the
representation slot), every world-model module's count, and compile time.  The last line is one
JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from wm_jax.config import load_config_file
from wm_jax.envs import make_env_spec
from wm_jax.schedule import UpdateCounts
from wm_jax.types import Sequence
from wm_jax.update import make_agent, make_steps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save_result  # noqa: E402

_CONFIGS = flags.DEFINE_string(
    "configs",
    "experiments/configs/cartpole.py,experiments/configs/cartpole_transformer.py,"
    "experiments/configs/cartpole_rssm.py",
    "comma-separated config files",
)
_REPEATS = flags.DEFINE_integer("repeats", 15, "timed rounds (medians are reported)")
_ENV = flags.DEFINE_string("env_id", "CartPole-v1", "environment whose spaces shape the batch")


def _batch(config, spec, key):
    b, t = config.batch_size, config.sequence_length
    k = jax.random.split(key, 3)
    return Sequence(
        obs=jax.random.normal(k[0], (b, t + 1, *spec.obs_shape)),
        action=jax.nn.one_hot(
            jax.random.randint(k[1], (b, t), 0, spec.action_dim), spec.action_dim
        ),
        reward=jnp.ones((b, t)),
        cont=(jax.random.uniform(k[2], (b, t)) > 0.05).astype(jnp.float32),
        mask=jnp.ones((b, t)),
    )


def _timed(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def main(argv):
    del argv
    spec = make_env_spec(_ENV.value)
    cases = {}
    for path in _CONFIGS.value.split(","):
        config = load_config_file(path)
        agent = make_agent(config, spec)
        steps = make_steps(agent)
        state = steps.init(jax.random.PRNGKey(0))
        batch = _batch(config, spec, jax.random.PRNGKey(1))
        counts = UpdateCounts(1, 1, 1)
        calls = {
            "train_step": lambda s=steps, st=state, b=batch: s.train_step(st, b, counts, 0.5),
            "world_model_update": lambda s=steps, st=state, b=batch: s.world_model_update(st, b),
            "actor_update": lambda s=steps, st=state, b=batch: s.actor_update(st, b),
        }
        compile_s = {name: _timed(fn) for name, fn in calls.items()}  # first call compiles
        for fn in calls.values():
            _timed(fn)
        sizes = {
            name: int(sum(x.size for x in jax.tree.leaves(module)))
            for name, module in state.wm_params["params"].items()
        }
        # The RSSM is two modules: the prior/recurrent core ("dynamics") and its posterior,
        # which sits in the representation slot; both are the dynamics model's parameters.
        rssm = config.model.dynamics == "rssm"
        dynamics_modules = ["dynamics", "representation"] if rssm else ["dynamics"]
        cases[path] = dict(
            dynamics=config.model.dynamics,
            calls=calls,
            compile_s=compile_s,
            times={name: [] for name in calls},
            dynamics_params=sum(sizes[name] for name in dynamics_modules),
            world_model_params=sizes,
        )
    for _ in range(_REPEATS.value):
        for case in cases.values():
            for name, fn in case["calls"].items():
                case["times"][name].append(_timed(fn))
    result = {}
    print(f"{'config':55s} {'dynamics':12s} {'params':>8s}  train_step  wm_update  actor_update")
    for path, case in cases.items():
        med = {name: statistics.median(ts) for name, ts in case["times"].items()}
        print(
            f"{path:55s} {case['dynamics']:12s} {case['dynamics_params']:8d}  "
            f"{med['train_step'] * 1e3:8.1f}ms {med['world_model_update'] * 1e3:8.1f}ms "
            f"{med['actor_update'] * 1e3:8.1f}ms"
        )
        result[path] = dict(
            dynamics=case["dynamics"],
            dynamics_params=case["dynamics_params"],
            world_model_params=case["world_model_params"],
            seconds=med,
            compile_s=case["compile_s"],
        )
    save_result("dynamics_cost", result)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
