"""A fingerprint of the programs a config trains with: did a refactor change the update?

    python experiments/benchmarks/program_fingerprint.py --config=experiments/configs/cartpole.py
    cd /tmp && PYTHONPATH=<older> python <tree>/experiments/benchmarks/program_fingerprint.py \
        --config=<older>/experiments/configs/cartpole.py

Lowers ``update.train_step`` of the config (on its batch shape, random CartPole-shaped data as
``train_step_variants.py``) for the warmup counts (world model only) and the full step, in each
``--precisions``, and prints the SHA-256 of each lowered StableHLO text.  Two checkouts printing
the same hashes train with the same XLA programs, so the update benchmark and the learning curves
of the host loop cannot differ through the update (the tracing is deterministic; source locations
are not part of the text).  Run from outside the tree, with ``PYTHONPATH``, to fingerprint an older
checkout.  Last line: one JSON object.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import types

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import random_batch, save_result  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/cartpole.py")
_PRECISIONS = flags.DEFINE_list("precisions", ["float32", "bfloat16"], "config.precision values")


def main(argv):
    del argv
    import wm_jax
    from wm_jax import update
    from wm_jax.schedule import UpdateCounts

    spec = types.SimpleNamespace(obs_shape=(4,), obs_dtype=np.float32, action_dim=2, discrete=True)
    hashes = {}
    for precision in _PRECISIONS.value:
        config = _CONFIG.value.copy_and_resolve_references()
        config.precision = precision
        agent = update.make_agent(config, spec)
        state = jax.jit(functools.partial(update.init_state, agent))(jax.random.PRNGKey(0))
        batch = jax.tree.map(
            jax.numpy.asarray, random_batch(config, spec, np.random.default_rng(0))
        )
        step = jax.jit(functools.partial(update.train_step, agent), static_argnums=(2,))
        for name, counts in (("warmup", UpdateCounts(1, 0, 0)), ("full", UpdateCounts(1, 1, 1))):
            text = step.lower(state, batch, counts, np.float32(0.5)).as_text()
            digest = hashlib.sha256(text.encode()).hexdigest()
            hashes[f"{precision}/{name}"] = digest
            print(f"{precision:>9s} {name:>6s}  {digest[:16]}  ({len(text)} characters)")
    result = {
        "benchmark": "program_fingerprint",
        "wm_jax": os.path.dirname(wm_jax.__file__),
        "sha256": hashes,
    }
    save_result("program_fingerprint", result)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
