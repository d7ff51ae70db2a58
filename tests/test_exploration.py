"""Correlated exploration noise (``actor.explore_correlation``, wm_jax.policy): each action is
still a sample of the policy; only consecutive draws are correlated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_spec, small_config

from wm_jax.config_rules import ConfigError, validate
from wm_jax.policy import (
    ActCarry,
    _next_noise,
    act,
    correlated_at,
    correlated_random_actions,
    greedy_envs,
    initial_carry,
    make_act_fn,
    noise_actions,
)
from wm_jax.update import init_state, make_agent

N, A = 2000, 3


def _carry(noise, is_first=False):
    return ActCarry(
        state=jnp.zeros((N, 1)),
        action=jnp.zeros((N, A)),
        is_first=jnp.full((N,), is_first),
        noise=noise,
    )


def _noise_path(rho, steps, key=0):
    """z_1..z_T [T, N, A] of the AR(1) process, started fresh."""

    def step(carry, key):
        z = _next_noise(carry, key, rho)
        return carry.replace(noise=z, is_first=jnp.zeros((N,), bool)), z

    keys = jax.random.split(jax.random.PRNGKey(key), steps)
    return jax.lax.scan(step, _carry(jnp.zeros((N, A)), is_first=True), keys)[1]


@pytest.mark.parametrize("rho", [0.0, 0.9])
def test_correlated_categorical_draws_keep_the_policy_probabilities(rho):
    probs = np.array([0.2, 0.5, 0.3], np.float32)
    z = _noise_path(rho, 60)
    actions = np.asarray(noise_actions(jnp.log(probs), None, z, True))  # [T, N, A]
    assert ((actions == 0) | (actions == 1)).all() and (actions.sum(-1) == 1).all()
    # Correlated draws are fewer independent samples (~N·T·(1-ρ)/(1+ρ)): a wider tolerance.
    tol = 0.01 if rho == 0.0 else 0.025
    np.testing.assert_allclose(actions.reshape(-1, A).mean(0), probs, atol=tol)
    # Same action as the step before: Σp² for independent draws, far more when correlated.
    repeat = (actions[1:] * actions[:-1]).sum(-1).mean()
    independent = float((probs**2).sum())
    if rho == 0.0:
        assert abs(repeat - independent) < 0.01
    else:
        assert repeat > independent + 0.3


def test_the_noise_is_standard_normal_at_every_step_with_lag_one_correlation_rho():
    z = np.asarray(_noise_path(0.9, 40))
    np.testing.assert_allclose(z[0].std(), 1.0, atol=0.03)  # fresh at the start, not shrunk
    np.testing.assert_allclose(z.mean(), 0.0, atol=0.02)
    np.testing.assert_allclose(z.std(), 1.0, atol=0.02)
    lag1 = (z[1:] * z[:-1]).mean() / z.var()
    np.testing.assert_allclose(lag1, 0.9, atol=0.02)


def test_continuous_draws_are_the_squashed_normal_of_the_policy():
    loc, scale = jnp.float32(0.3), jnp.float32(0.5)
    z = _noise_path(0.9, 30)
    pre = np.arctanh(np.clip(np.asarray(noise_actions(loc, scale, z, False)), -0.999999, 0.999999))
    np.testing.assert_allclose(pre.mean(), 0.3, atol=0.02)
    np.testing.assert_allclose(pre.std(), 0.5, atol=0.02)


def test_an_episode_start_draws_fresh_noise_unrelated_to_the_last_episode():
    key = jax.random.PRNGKey(3)
    old = jnp.full((N, A), 5.0)
    fresh = _next_noise(_carry(old, is_first=True), key, 0.9)
    continuing = _next_noise(_carry(old, is_first=False), key, 0.9)
    eps = jax.random.normal(key, (N, A))
    np.testing.assert_array_equal(fresh, eps)
    np.testing.assert_allclose(continuing, 0.9 * 5.0 + np.sqrt(1 - 0.81) * eps, rtol=1e-6)


def test_the_random_prefill_draws_uniform_actions_that_hold_for_several_steps():
    carry = _carry(jnp.zeros((N, A)), is_first=True)
    draws = []
    for i in range(40):
        actions, carry = correlated_random_actions(carry, jax.random.PRNGKey(i), True, 0.9)
        carry = carry.replace(is_first=jnp.zeros((N,), bool))
        draws.append(np.asarray(actions))
    draws = np.stack(draws)
    np.testing.assert_allclose(draws.reshape(-1, A).mean(0), [1 / 3] * 3, atol=0.025)
    assert (draws[1:] * draws[:-1]).sum(-1).mean() > 1 / 3 + 0.3
    start = ActCarry(jnp.zeros((N, 1)), jnp.zeros((N, 1)), jnp.ones((N,), bool), jnp.zeros((N, 1)))
    cont, _ = correlated_random_actions(start, jax.random.PRNGKey(0), False, 0.9)
    cont = np.asarray(cont)
    assert cont.min() >= -1 and cont.max() <= 1
    np.testing.assert_allclose(np.histogram(cont, 4, (-1, 1))[0] / N, [0.25] * 4, atol=0.04)


@pytest.mark.parametrize("discrete", [True, False])
def test_acting_without_correlation_keeps_independent_policy_samples_and_no_noise(discrete):
    spec = make_spec(action_dim=3 if discrete else 1, discrete=discrete)
    agent = make_agent(small_config(), spec)
    state = init_state(agent, jax.random.PRNGKey(0))
    carry = initial_carry(agent, 4)
    assert carry.noise is None
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, 4))
    key = jax.random.PRNGKey(2)
    actions, out = act(agent, state.wm_params, state.actor_params, carry, obs, 0.0, 1.0, key, False)
    assert out.noise is None
    dist = agent.nets.actor.apply(state.actor_params, out.state)
    np.testing.assert_array_equal(actions, dist.sample(seed=key))


def test_acting_with_correlation_carries_the_noise_and_a_deterministic_act_leaves_it():
    spec = make_spec(action_dim=3, discrete=True)
    agent = make_agent(small_config(**{"actor.explore_correlation": 0.9}), spec)
    state = init_state(agent, jax.random.PRNGKey(0))
    carry = initial_carry(agent, 4)
    assert carry.noise.shape == (4, 3)
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, 4))
    key = jax.random.PRNGKey(2)
    actions, out = act(agent, state.wm_params, state.actor_params, carry, obs, 0.0, 1.0, key, False)
    np.testing.assert_array_equal(out.noise, jax.random.normal(key, (4, 3)))  # episode start
    dist = agent.nets.actor.apply(state.actor_params, out.state)
    np.testing.assert_array_equal(actions, noise_actions(dist.logits, None, out.noise, True))
    _, again = act(agent, state.wm_params, state.actor_params, out, obs, 0.0, 1.0, key, True)
    np.testing.assert_array_equal(again.noise, out.noise)


@pytest.mark.parametrize(
    "field,value",
    [
        ("actor.explore_correlation", 1.0),
        ("actor.explore_correlation", -0.1),
        ("actor.explore_correlation_steps", -1),
    ],
)
def test_a_correlation_outside_zero_to_one_or_a_bad_window_is_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        validate(small_config(**{field: value}))


def test_the_correlation_lasts_explore_correlation_steps_env_steps():
    assert correlated_at(small_config(), 0) is False
    whole = small_config(**{"actor.explore_correlation": 0.9})
    assert correlated_at(whole, 10**9) is True
    window = small_config(
        **{"actor.explore_correlation": 0.9, "actor.explore_correlation_steps": 5000}
    )
    assert correlated_at(window, 4999) and not correlated_at(window, 5000)
    traced = [bool(correlated_at(window, jnp.int32(step))) for step in (4999, 5000)]
    assert traced == [True, False]


def test_after_the_window_a_traced_switch_gives_independent_samples_and_keeps_the_noise():
    """The on-device loop decides per step (traced): after the window it must act exactly as
    a run without correlation, and before it as the correlated policy."""
    spec = make_spec(action_dim=3, discrete=True)
    agent = make_agent(small_config(**{"actor.explore_correlation": 0.9}), spec)
    state = init_state(agent, jax.random.PRNGKey(0))
    carry = initial_carry(agent, 64).replace(
        noise=jax.random.normal(jax.random.PRNGKey(5), (64, 3)), is_first=np.zeros(64, bool)
    )
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, 4))
    key = jax.random.PRNGKey(2)
    run = jax.jit(
        lambda c, flag: act(agent, state.wm_params, state.actor_params, c, obs, 0.0, 1.0, key,
                            False, flag)
    )  # fmt: skip
    static = [
        act(agent, state.wm_params, state.actor_params, carry, obs, 0.0, 1.0, key, False, flag)
        for flag in (True, False)
    ]
    for flag, (want_actions, want_carry) in zip((True, False), static, strict=True):
        actions, out = run(carry, jnp.asarray(flag))
        np.testing.assert_array_equal(actions, want_actions)
        # jit vs eager: the same noise up to float rounding
        np.testing.assert_allclose(out.noise, want_carry.noise, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(static[1][1].noise, carry.noise)  # frozen after the window
    dist = agent.nets.actor.apply(state.actor_params, static[1][1].state)
    np.testing.assert_array_equal(static[1][0], dist.sample(seed=key))
    assert not np.array_equal(static[0][0], static[1][0])


def test_a_continuous_policy_acts_with_the_squashed_normal_of_its_correlated_noise():
    spec = make_spec(action_dim=2, discrete=False)
    agent = make_agent(small_config(**{"actor.explore_correlation": 0.9}), spec)
    state = init_state(agent, jax.random.PRNGKey(0))
    carry = initial_carry(agent, 4).replace(
        noise=jnp.ones((4, 2)), is_first=np.array([True, False, False, False])
    )
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, 4))
    key = jax.random.PRNGKey(2)
    actions, out = act(agent, state.wm_params, state.actor_params, carry, obs, 0.0, 1.0, key, False)
    eps = jax.random.normal(key, (4, 2))
    want = np.where([[True], [False], [False], [False]], eps, 0.9 + np.sqrt(1 - 0.81) * eps)
    np.testing.assert_allclose(out.noise, want, rtol=1e-6)
    base = agent.nets.actor.apply(state.actor_params, out.state).distribution
    np.testing.assert_allclose(actions, np.tanh(base.loc + base.scale_diag * out.noise), rtol=1e-6)


@pytest.mark.parametrize("discrete,rho", [(True, 0.0), (True, 0.9), (False, 0.0), (False, 0.9)])
def test_greedy_rows_play_the_mode_and_the_other_rows_sample_as_without_them(discrete, rho):
    spec = make_spec(action_dim=3, discrete=discrete)
    agent = make_agent(small_config(**{"actor.explore_correlation": rho}), spec)
    state = init_state(agent, jax.random.PRNGKey(0))
    carry = initial_carry(agent, 64)
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, 4))
    key = jax.random.PRNGKey(2)

    def run(deterministic, greedy=0):
        return act(
            agent, state.wm_params, state.actor_params, carry, obs, 0.0, 1.0, key,
            deterministic, greedy=greedy,
        )  # fmt: skip

    sampled, plain = run(False)
    mode, _ = run(True)
    mixed, out = run(False, greedy=2)
    np.testing.assert_array_equal(mixed[:2], mode[:2])
    np.testing.assert_array_equal(mixed[2:], sampled[2:])
    assert not np.array_equal(sampled, mode)
    if rho > 0:  # every env's noise advances as it would without greedy rows
        np.testing.assert_array_equal(out.noise, plain.noise)


def test_only_a_training_loops_act_fn_has_greedy_envs_and_a_loaded_policy_samples_every_row():
    spec = make_spec(action_dim=3, discrete=True)
    agent = make_agent(small_config(**{"num_envs": 4, "actor.greedy_envs": 1}), spec)
    state = init_state(agent, jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, 4))
    key = jax.random.PRNGKey(2)
    args = (state.wm_params, state.actor_params, initial_carry(agent, 4), obs, 0.0, 1.0, key)
    training, serving = make_act_fn(agent, training_envs=4), make_act_fn(agent)
    assert (training.greedy, serving.greedy) == (1, 0)
    expect = act(agent, *args, False, greedy=1)[0]
    np.testing.assert_array_equal(training(*args, deterministic=False)[0], expect)
    sampled = act(agent, *args, False)[0]
    np.testing.assert_array_equal(serving(*args, deterministic=False)[0], sampled)
    # Two processes with 2 envs each: one greedy env each is fine, two would leave none sampling.
    assert greedy_envs(agent.config, 2) == 1
    two = small_config(**{"num_envs": 4, "actor.greedy_envs": 2})
    with pytest.raises(ConfigError, match="actor.greedy_envs.*at most 1"):
        greedy_envs(two, 2)


@pytest.mark.parametrize("value", [-1, 4, 5])
def test_greedy_envs_must_leave_an_env_that_samples(value):
    with pytest.raises(ConfigError, match="actor.greedy_envs"):
        validate(small_config(**{"num_envs": 4, "actor.greedy_envs": value}))
    validate(small_config(**{"num_envs": 4, "actor.greedy_envs": 3}))
