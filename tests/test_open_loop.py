"""The open-loop prediction check: what it compares, and that padding never counts."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import make_spec, random_sequence, small_config

from wm_jax.open_loop import make_open_loop_fn
from wm_jax.update import make_agent, make_steps


def test_open_loop_check_first_step_is_the_one_step_error_and_padding_is_ignored():
    spec = make_spec()
    agent = make_agent(small_config(), spec)
    state = make_steps(agent).init(jax.random.PRNGKey(0))
    check = make_open_loop_fn(agent)
    batch = random_sequence(jax.random.PRNGKey(1), spec, batch=4, length=6)
    mask = batch.mask.at[:2, 3:].set(0.0)  # two windows end after 3 steps
    batch = batch.replace(mask=mask)
    out = check(state.wm_params, batch)
    assert out["obs_error_by_step"].shape == (6,)
    assert out["pred_obs"].shape == (4, 6, 4)
    np.testing.assert_array_equal(out["valid_by_step"], [4, 4, 4, 2, 2, 2])

    # Step 1 of the open-loop rollout is the plain one-step prediction from the true state.
    wm = agent.nets.world_model
    s = wm.apply(state.wm_params, batch.obs, False, method=wm.encode)
    nxt = wm.apply(state.wm_params, s[:, 0], batch.action[:, 0], method=wm.predict_next).mean()
    np.testing.assert_allclose(
        out["state_error_by_step"][0], jnp.mean((nxt - s[:, 1]) ** 2), rtol=1e-5
    )

    # Whatever sits in the padded part of a window never changes the errors.
    noisy = batch.replace(obs=batch.obs.at[:2, 4:].add(100.0))
    out2 = check(state.wm_params, noisy)
    np.testing.assert_allclose(out2["obs_error_by_step"], out["obs_error_by_step"], rtol=1e-6)
    np.testing.assert_allclose(out2["state_error_by_step"], out["state_error_by_step"], rtol=1e-6)
