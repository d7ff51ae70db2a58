"""Data parallelism: a batch sharded over four (virtual CPU) devices trains exactly like the
same global batch on one device, up to float reduction order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_COMPILE_XLA, REPO

# Runs in its own process: the device count is fixed when JAX starts.
_SCRIPT = r"""
import json, sys
import jax, numpy as np
from jax.sharding import PartitionSpec as P
sys.path.insert(0, "tests")
from conftest import make_spec, random_sequence, small_config
from wm_jax.schedule import UpdateCounts
from wm_jax.sharding import make_mesh, replicate, shard_batch
from wm_jax.update import make_agent, make_steps

assert jax.device_count() == 4, jax.devices()
spec = make_spec()
agent = make_agent(small_config(sequence_mode=True, batch_size=8, sequence_length=6), spec)
steps = make_steps(agent)
batches = [random_sequence(jax.random.PRNGKey(i), spec, batch=8, length=6) for i in range(3)]
mesh = make_mesh()

def run(shard):
    state = steps.init(jax.random.PRNGKey(0))
    if shard:
        state = replicate(state, mesh)
    losses = []
    for batch in batches:
        if shard:
            batch = shard_batch(batch, mesh)
            assert len(batch.obs.sharding.device_set) == 4
        state, m = steps.train_step(state, batch, UpdateCounts(1, 1, 1), 0.5)
        losses.append([float(m[k]) for k in ("world_model_loss", "actor_loss", "critic_loss")])
    params = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(state.wm_params))])
    # Replicated = an empty PartitionSpec on every leaf.
    specs = {getattr(x.sharding, "spec", None) == P() for x in jax.tree.leaves(state.wm_params)}
    return losses, params.tolist(), sorted(specs)

single = run(False)
sharded = run(True)
odd = None
try:
    shard_batch(random_sequence(jax.random.PRNGKey(9), spec, batch=6, length=6), mesh)
except ValueError as err:
    odd = str(err)
# The training loops with config.data_parallel: the host loop shards each batch, the device
# loop spreads its seeds over the devices.
import tempfile
from wm_jax.device_loop import train_device
from wm_jax.trainer import Trainer
loops = {}
with tempfile.TemporaryDirectory() as tmp:
    c = small_config(total_env_steps=96, prefill_steps=64, eval_every=0, checkpoint_every=96,
                     report=False, data_parallel=True, **{"schedule.warmup_steps": 0,
                     "schedule.transition_steps": 0, "diagnostics.open_loop_every": 0})
    trainer = Trainer(c, tmp + "/host")
    trainer.run()
    loops["host_updates"] = trainer.updates
    loops["host_replicated"] = sorted(
        {x.sharding.spec == P() for x in jax.tree.leaves(trainer.state.actor_params)})
    trainer.close()
    c.env_id, c.loop, c.num_seeds = "gymnax:CartPole-v1", "device", 4
    results = train_device(c, tmp + "/device")
    loops["device_steps"] = [r.env_steps for r in results]
print(json.dumps({"single": single, "sharded": sharded, "odd": odd, "loops": loops}))
"""


@pytest.mark.slow
def test_sharded_training_matches_single_device_training_and_both_loops_run_data_parallel():
    # The 4 CPU "devices" meet in each all-reduce as threads; on a loaded machine (two test
    # workers on 2 cores) one can arrive after XLA's default 40 s, which aborts the process.
    flags = "--xla_cpu_collective_call_terminate_timeout_seconds=900"
    flags += f" --xla_force_host_platform_device_count=4 {FAST_COMPILE_XLA}"
    env = dict(os.environ, XLA_FLAGS=flags.strip())
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    (single_losses, single_params, _), (sharded_losses, sharded_params, sharding) = (
        out["single"],
        out["sharded"],
    )
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sharded_params, single_params, rtol=1e-4, atol=1e-6)
    assert sharding == [True]  # parameters stay replicated after the update
    assert out["odd"] and "multiple of 4" in out["odd"]
    loops = out["loops"]
    assert loops["host_updates"] == 9 and loops["host_replicated"] == [True]
    assert loops["device_steps"] == [96] * 4
