"""Transformer dynamics (issue 5): causal and banded masking, padding, the single-step fallback,
the KV-cache window against whole-sequence attention, and imagination carrying the window."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_spec, random_sequence, small_config

from wm_jax.config import ConfigError, validate
from wm_jax.imagination import imagine
from wm_jax.networks.transformer import TransformerDynamics
from wm_jax.schedule import UpdateCounts
from wm_jax.types import SequenceContext, make_causal_mask
from wm_jax.update import make_agent, make_steps, world_model_loss

S, A = 5, 2


def _context(states, actions, mask):
    return SequenceContext(
        features=None,
        states=states,
        actions=actions,
        rewards=None,
        continues=None,
        causal_mask=make_causal_mask(states.shape[1]),
        padding_mask=mask > 0,
    )


def _module(layers=2, context_length=4):
    model = TransformerDynamics(
        state_dim=S, embed_dim=16, num_layers=layers, num_heads=2, context_length=context_length
    )
    k = jax.random.split(jax.random.PRNGKey(0), 2)
    params = model.init(k[0], jnp.zeros((1, S)), jnp.zeros((1, A)))
    # Perturb every parameter: the relative-position bias starts at zero and would hide
    # distance-dependent mistakes.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(k[1], len(leaves))
    leaves = [
        x + 0.3 * jax.random.normal(key, x.shape) for x, key in zip(leaves, keys, strict=True)
    ]
    return model, jax.tree.unflatten(tree, leaves)


def _sequence(b=3, t=7, seed=1):
    k = jax.random.split(jax.random.PRNGKey(seed), 2)
    return jax.random.normal(k[0], (b, t, S)), jax.random.normal(k[1], (b, t, A))


def _predict(model, params, states, actions, mask=None):
    mask = jnp.ones(states.shape[:2]) if mask is None else mask
    return model.apply(params, states, actions, _context(states, actions, mask)).loc


@pytest.mark.slow
def test_changing_a_step_never_changes_an_earlier_prediction_and_changes_later_ones():
    model, params = _module(context_length=8)
    states, actions = _sequence()
    before = _predict(model, params, states, actions)
    assert before.shape == (3, 7, S)
    for t in (0, 3, 6):
        changed = _predict(model, params, states.at[:, t].add(1.0), actions.at[:, t].add(-1.0))
        np.testing.assert_array_equal(changed[:, :t], before[:, :t])
        diff = jnp.abs(changed[:, t:] - before[:, t:]).max(-1)  # [B, T - t]
        assert bool(jnp.all(diff > 1e-4)), (t, diff)


@pytest.mark.slow
def test_band_limits_one_layer_to_the_last_context_length_steps():
    model, params = _module(layers=1, context_length=3)
    states, actions = _sequence(t=8)
    before = _predict(model, params, states, actions)
    changed = _predict(model, params, states.at[:, 0].add(1.0), actions)
    diff = jnp.abs(changed - before).max((0, 2))
    assert bool(jnp.all(diff[:3] > 1e-4))  # distances 0, 1, 2 < K = 3 see step 0
    np.testing.assert_array_equal(changed[:, 3:], before[:, 3:])  # distance >= K does not


@pytest.mark.slow  # compile-heavy, like the other transformer checks in the slow tier
def test_padded_keys_are_ignored_by_real_positions():
    model, params = _module(context_length=8)
    states, actions = _sequence()
    mask = jnp.ones((3, 7)).at[0, 4:].set(0.0).at[2, 1:].set(0.0)
    before = _predict(model, params, states, actions, mask)
    noisy = _predict(model, params, states.at[:, 4:].add(5.0), actions.at[:, 4:].add(5.0), mask)
    real = mask[..., None] > 0
    np.testing.assert_array_equal(
        jnp.where(real, noisy, 0.0)[:, :4], jnp.where(real, before, 0)[:, :4]
    )
    # Row 1 has no padding, so its later steps do change: the mask is per row.
    assert float(jnp.abs(noisy[1, 4:] - before[1, 4:]).max()) > 1e-4


@pytest.mark.slow
def test_single_step_fallback_equals_a_length_one_context():
    model, params = _module()
    states, actions = _sequence(b=4, t=1)
    fallback = model.apply(params, states[:, 0], actions[:, 0])
    one = model.apply(params, states, actions, _context(states, actions, jnp.ones((4, 1))))
    assert fallback.loc.shape == (4, S)
    np.testing.assert_allclose(fallback.loc, one.loc[:, 0], atol=1e-6)
    np.testing.assert_allclose(fallback.scale, one.scale[:, 0], atol=1e-6)


@pytest.mark.slow
def test_kv_cache_steps_equal_whole_sequence_attention_past_the_window():
    model, params = _module(context_length=4)
    states, actions = _sequence(t=9)  # longer than K: the window slides
    mask = jnp.ones((3, 9)).at[1, 6:].set(0.0)
    full = _predict(model, params, states, actions, mask)
    window = model.empty_window(3)
    stepped = []
    for t in range(9):
        dist, window = model.apply(params, window, states[:, t], actions[:, t], method=model.step)
        stepped.append(dist.loc)
    real = mask[..., None] > 0
    np.testing.assert_allclose(
        jnp.where(real, jnp.stack(stepped, 1), 0), jnp.where(real, full, 0), atol=1e-5
    )
    # Each step's window of the real steps before it predicts what the whole sequence does.
    starts = model.apply(params, states, actions, mask, method=model.sequence_window)
    assert starts.entries.shape[:2] == (27, 4)
    np.testing.assert_array_equal(
        starts.count.reshape(3, 9)[1], jnp.array([0, 1, 2, 3, 3, 3, 3, 0, 0])
    )
    first, _ = model.apply(
        params, starts, states.reshape(27, S), actions.reshape(27, A), method=model.step
    )
    np.testing.assert_allclose(
        jnp.where(real, first.loc.reshape(3, 9, S), 0), jnp.where(real, full, 0), atol=1e-5
    )


def _config(**overrides):
    return small_config(
        **{
            "model.dynamics": "transformer",
            "model.context_length": 4,
            "model.transformer_layers": 1,
            "model.transformer_heads": 2,
            "model.state_dim": S,
            "model.hidden_dim": 16,
            "model.feature_dim": 16,
            "imagination.horizon": 6,
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def agent_setup():
    spec = make_spec(obs_shape=(3,), action_dim=A, discrete=True)
    agent = make_agent(_config(sequence_mode=True, sequence_length=6), spec)
    steps = make_steps(agent)
    return agent, steps, steps.init(jax.random.PRNGKey(0)), spec


@pytest.mark.slow
def test_padded_steps_contribute_zero_loss_and_zero_gradient(agent_setup):
    agent, _, state, spec = agent_setup
    batch = random_sequence(jax.random.PRNGKey(3), spec, batch=4, length=6, terminate_at=None)
    batch = batch.replace(mask=batch.mask.at[0, 3:].set(0.0).at[2, 1:].set(0.0))
    loss_and_grad = jax.jit(
        jax.value_and_grad(functools.partial(world_model_loss, agent), argnums=(0, 1), has_aux=True)
    )
    key = jax.random.PRNGKey(4)
    (loss, metrics), (grads, batch_grads) = loss_and_grad(state.wm_params, batch, key)
    assert float(metrics["multi_step_loss"]) > 0
    # Padded transitions t >= t0 of a row: actions, rewards, continues at t, observations t + 1.
    pad = batch.mask == 0
    pad_obs = jnp.concatenate([jnp.zeros_like(pad[:, :1]), pad], 1)
    noise = jax.random.normal(jax.random.PRNGKey(5), batch.obs.shape)
    noisy = batch.replace(
        obs=jnp.where(pad_obs[..., None], batch.obs + 3.0 * noise, batch.obs),
        action=jnp.where(pad[..., None], 1.0 - batch.action, batch.action),
        reward=jnp.where(pad, batch.reward + 7.0, batch.reward),
        cont=jnp.where(pad, 0.0, batch.cont),
    )
    (noisy_loss, _), (noisy_grads, _) = loss_and_grad(state.wm_params, noisy, key)
    np.testing.assert_allclose(noisy_loss, loss, rtol=1e-6)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), noisy_grads, grads
    )
    # ... and the loss has no gradient w.r.t. the padded inputs themselves.
    assert float(jnp.abs(jnp.where(pad_obs[..., None], batch_grads.obs, 0)).max()) == 0.0
    assert float(jnp.abs(jnp.where(pad[..., None], batch_grads.action, 0)).max()) == 0.0
    assert float(jnp.abs(batch_grads.obs).max()) > 0  # the real steps do have one


@pytest.mark.slow
def test_imagination_carries_the_window(agent_setup):
    agent, _, state, spec = agent_setup
    nets, wm = agent.nets, agent.nets.world_model
    real = random_sequence(jax.random.PRNGKey(6), spec, batch=3, length=6)
    states = wm.apply(state.wm_params, real.obs[:, :-1], method=wm.encode)
    p = 3  # start after three real steps: the window holds them
    windows = wm.apply(
        state.wm_params,
        states,
        real.action,
        real.mask,
        method=lambda m, *a: m.dynamics.sequence_window(*a),
    )
    start_window = jax.tree.map(lambda x: x.reshape(3, 6, *x.shape[1:])[:, p], windows)
    run = functools.partial(
        imagine,
        nets,
        state.wm_params,
        state.actor_params,
        state.critic_params,
        key=jax.random.PRNGKey(7),
        horizon=6,
        discrete=True,
    )
    imagined = run(states[:, p], start_window=start_window)
    assert imagined.states.shape == (7, 3, S)
    assert imagined.actions.shape == (6, 3, A)
    assert imagined.rewards.shape == imagined.continues.shape == (6, 3)
    # Every imagined state is the whole-sequence prediction over real prefix + imagined steps:
    # the window (K = 4 < 3 + 6 steps, so it slides) carried exactly what attention needs.
    seq_s = jnp.concatenate([states[:, :p], jnp.swapaxes(imagined.states[:-1], 0, 1)], 1)
    seq_a = jnp.concatenate([real.action[:, :p], jnp.swapaxes(imagined.actions, 0, 1)], 1)
    ctx = _context(seq_s, seq_a, jnp.ones(seq_s.shape[:2]))
    full = wm.apply(state.wm_params, seq_s, seq_a, ctx, method=wm.predict_next).loc
    np.testing.assert_allclose(
        full[:, p:], jnp.swapaxes(imagined.states[1:], 0, 1), rtol=1e-5, atol=1e-5
    )
    # Imagined step 2 depends on the start state through the window, not only through step 1:
    # with the window cleared before each step (single steps) the rollout differs.
    single = run(states[:, p], start_window=wm.dynamics.empty_window(3, 1))
    assert float(jnp.abs(single.states[2:] - imagined.states[2:]).max()) > 1e-4


@pytest.mark.slow
def test_train_step_runs_and_is_finite(agent_setup):
    agent, steps, state, spec = agent_setup
    batch = random_sequence(jax.random.PRNGKey(8), spec, batch=4, length=6, terminate_at=4)
    batch = batch.replace(mask=batch.mask.at[1, 5:].set(0.0))
    new, metrics = steps.train_step(state, batch, UpdateCounts(1, 1, 1), 0.5)
    for name in ("dynamics_loss", "multi_step_loss", "actor_loss", "critic_loss"):
        assert np.isfinite(float(metrics[name])), name
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new.wm_params))
    dyn_old = state.wm_params["params"]["dynamics"]
    dyn_new = new.wm_params["params"]["dynamics"]
    assert not all(jax.tree.leaves(jax.tree.map(jnp.array_equal, dyn_old, dyn_new)))


def test_config_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ConfigError, match="model.transformer_heads"):
        validate(_config(**{"model.transformer_heads": 3}))
    with pytest.raises(ConfigError, match="model.context_length"):
        validate(_config(**{"model.context_length": 0}))
