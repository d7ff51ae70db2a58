"""The update's shortcuts equal the full computation they replace (issue 18): a statically or
dynamically zero real-data critic weight skips that term, and at τ = 1 the critic reuses the
imagined values instead of evaluating the target critic again."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_spec, random_transitions, small_config

from wm_jax import losses
from wm_jax.imagination import imagine, next_state, policy_step
from wm_jax.returns import lambda_returns
from wm_jax.schedule import UpdateCounts
from wm_jax.update import (
    actor_update,
    critic_loss_fn,
    critic_update,
    make_agent,
    make_steps,
    observe_batch,
    real_value_targets,
    train_step,
    world_model_update,
)


def _close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def setup():
    spec = make_spec(obs_shape=(3,), action_dim=1, discrete=False)
    agent = make_agent(small_config(), spec)
    steps = make_steps(agent)
    state = steps.init(jax.random.PRNGKey(0))
    batch = random_transitions(jax.random.PRNGKey(1), spec)
    # A couple of full steps so the value head is no longer all zeros.
    for _ in range(2):
        state, _ = steps.train_step(state, batch, UpdateCounts(1, 1, 1), 0.5)
    _, _, imagined, weights = jax.jit(functools.partial(actor_update, agent))(state, batch)
    return agent, state, batch, imagined, weights


def _loss_and_grad(agent, state, batch, imagined, weights, real, mix, reuse=False):
    fn = jax.value_and_grad(critic_loss_fn, has_aux=True)
    (loss, metrics), grads = fn(
        state.critic_params, agent, state, imagined, weights, real, mix, reuse
    )
    return loss, metrics, grads


@pytest.mark.slow  # compiles two whole train steps
def test_skipped_real_term_equals_the_weight_zero_term(setup):
    agent, state, batch, imagined, weights = setup
    real = functools.partial(real_value_targets, agent, state, batch)
    # Full: the real term computed and weighted by a (Python) 0.
    full_loss, full_m, full_g = _loss_and_grad(agent, state, batch, imagined, weights, real, 0.0)
    assert float(full_m["critic_loss_real"]) > 0  # it really was computed
    # Static skip: nothing of the real term is built.
    skip_loss, skip_m, skip_g = _loss_and_grad(agent, state, batch, imagined, weights, None, 0.0)
    assert float(skip_m["critic_loss_real"]) == 0.0
    # Traced zero: lax.cond takes the skipping branch.
    traced = jax.jit(lambda mix: _loss_and_grad(agent, state, batch, imagined, weights, real, mix))
    cond_loss, cond_m, cond_g = traced(jnp.float32(0.0))
    assert float(cond_m["critic_loss_real"]) == 0.0
    for loss, grads in ((skip_loss, skip_g), (cond_loss, cond_g)):
        _close(loss, full_loss)
        _close(grads, full_g)


def test_traced_nonzero_mix_computes_the_real_term(setup):
    agent, state, batch, imagined, weights = setup
    real = functools.partial(real_value_targets, agent, state, batch)
    static_loss, static_m, static_g = _loss_and_grad(
        agent, state, batch, imagined, weights, real, 0.3
    )
    traced = jax.jit(lambda mix: _loss_and_grad(agent, state, batch, imagined, weights, real, mix))
    cond_loss, cond_m, cond_g = traced(jnp.float32(0.3))
    assert float(cond_m["critic_loss_real"]) > 0
    _close(cond_m["critic_loss_real"], static_m["critic_loss_real"])
    _close(cond_loss, static_loss)
    _close(cond_g, static_g)


def test_reused_imagined_values_equal_the_target_critic_at_tau_one(setup):
    agent, state, batch, imagined, weights = setup
    assert agent.config.critic.target_update_rate == 1.0
    assert all(
        bool(jnp.array_equal(a, b))
        for a, b in zip(
            jax.tree.leaves(state.critic_params),
            jax.tree.leaves(state.critic_target_params),
            strict=True,
        )
    )
    full = _loss_and_grad(agent, state, batch, imagined, weights, None, 0.0, reuse=False)
    reused = _loss_and_grad(agent, state, batch, imagined, weights, None, 0.0, reuse=True)
    _close(reused[0], full[0])
    _close(reused[2], full[2])
    # Both equal the loss written out: V on the first H states against λ-returns bootstrapped
    # from the target critic's values of the last H (the update reads V on all H + 1 and drops
    # the last row to share imagination's forward pass).
    cfg = agent.config.imagination
    values = agent.nets.critic.apply(state.critic_params, imagined.states[:-1])
    bootstrap = agent.nets.critic.apply(state.critic_target_params, imagined.states[1:])
    targets = lambda_returns(
        imagined.rewards, imagined.continues, bootstrap, cfg.gamma, cfg.lambda_
    )
    w = jnp.broadcast_to(weights[None], targets.shape)
    _close(full[0], losses.critic_loss(values, targets, w)[0])
    # ... and the check can fail: with a different target critic the two disagree.
    other = state.replace(
        critic_target_params=jax.tree.map(lambda p: p * 1.5 + 0.01, state.critic_target_params)
    )
    moved = _loss_and_grad(agent, other, batch, imagined, weights, None, 0.0, reuse=False)
    assert not np.allclose(np.asarray(moved[0]), np.asarray(full[0]), rtol=1e-4)


@pytest.mark.slow  # compiles the train step and its unshortened composition
def test_train_step_equals_the_unshortened_composition(setup):
    """train_step (reused imagined values, skipped real term at mix 0) against world model,
    actor and critic updates run one by one with the target critic evaluated again."""
    agent, state, batch, _, _ = setup

    @jax.jit
    def reference(state, mix):
        state, _ = world_model_update(agent, state, batch)
        observed = observe_batch(agent, state.wm_params, batch)
        state, _, imagined, weights = actor_update(agent, state, batch, observed)
        return critic_update(agent, state, batch, imagined, weights, mix, observed, False)

    @jax.jit
    def shortened(state, mix):
        return train_step(agent, state, batch, UpdateCounts(1, 1, 1), mix)

    static_zero = jax.jit(lambda s: train_step(agent, s, batch, UpdateCounts(1, 1, 1), 0.0))
    for mix in (0.0, 0.5):
        ref_state, ref_metrics = reference(state, jnp.float32(mix))
        runs = [shortened(state, jnp.float32(mix))]
        if mix == 0.0:
            runs.append(static_zero(state))
        for new_state, metrics in runs:
            _close(new_state.actor_params, ref_state.actor_params)
            _close(new_state.critic_params, ref_state.critic_params)
            _close(new_state.critic_target_params, ref_state.critic_params)
            for name in ("critic_loss", "critic_loss_imagined", "critic_loss_real"):
                _close(metrics[name], ref_metrics[name])


def test_imagination_heads_on_the_finished_trajectory_equal_a_per_step_rollout(setup):
    """Reward, continue and value are read once on the stacked [H+1, B] states after the scan;
    a plain Python loop reading them at every step gives the same trajectory and the same actor
    gradient (values and pathwise gradients through the heads)."""
    agent, state, batch, _, _ = setup
    nets, wm = agent.nets, agent.nets.world_model
    starts = observe_batch(agent, state.wm_params, batch).states
    key, horizon = jax.random.PRNGKey(7), 4

    def per_step(actor_params):
        states, rewards, conts, values, log_probs = [starts], [], [], [], []
        values.append(nets.critic.apply(state.critic_params, starts))
        for step_key in jax.random.split(key, horizon):
            policy_key, dynamics_key = jax.random.split(step_key)
            action, log_prob, _ = policy_step(nets, actor_params, states[-1], policy_key, False)
            dist = wm.apply(state.wm_params, states[-1], action, method=wm.predict_next)
            nxt = next_state(dist, dynamics_key, False)
            rewards.append(wm.apply(state.wm_params, nxt, method=wm.reward).mean())
            conts.append(wm.apply(state.wm_params, nxt, method=wm.cont).probs)
            values.append(nets.critic.apply(state.critic_params, nxt))
            states.append(nxt)
            log_probs.append(log_prob)
        return tuple(jnp.stack(x) for x in (states, rewards, conts, values, log_probs))

    def scanned(actor_params):
        out = imagine(
            nets, state.wm_params, actor_params, state.critic_params, starts, key, horizon, False
        )
        return out.states, out.rewards, out.continues, out.values, out.log_probs

    def scalar(fn, actor_params):
        states, rewards, conts, values, log_probs = fn(actor_params)
        return jnp.sum(rewards) + jnp.sum(conts * values[1:]) + 0.1 * jnp.sum(log_probs)

    _close(jax.jit(scanned)(state.actor_params), jax.jit(per_step)(state.actor_params))
    grads = [
        jax.jit(jax.grad(functools.partial(scalar, f)))(state.actor_params)
        for f in (scanned, per_step)
    ]
    _close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[0])) > 0


def _moved_target(state):
    return state.replace(
        critic_target_params=jax.tree.map(lambda p: p * 1.5 + 0.01, state.critic_target_params)
    )


def test_online_bootstrap_reads_the_critic_being_trained_not_the_target_one(setup):
    """critic.bootstrap = "online" (DreamerV3): the λ-return targets, imagined and real, are
    those of a target critic set to the online parameters, whatever the target critic holds,
    and the first update's reuse of the imagined values is exact."""
    agent, state, batch, imagined, weights = setup
    online = make_agent(small_config(**{"critic.bootstrap": "online"}), agent.spec)
    moved = _moved_target(state)
    same = moved.replace(critic_target_params=moved.critic_params)
    for mix in (0.0, 0.5):
        real = functools.partial(real_value_targets, online, moved, batch)
        got = _loss_and_grad(online, moved, batch, imagined, weights, real, mix)
        reused = _loss_and_grad(online, moved, batch, imagined, weights, real, mix, reuse=True)
        ref_real = functools.partial(real_value_targets, agent, same, batch)
        ref = _loss_and_grad(agent, same, batch, imagined, weights, ref_real, mix)
        for a, b in ((got, ref), (reused, ref)):
            _close(a[0], b[0])
            _close(a[2], b[2])
    # ... and the default ("target") does read the moved target critic: the check can fail.
    target = _loss_and_grad(agent, moved, batch, imagined, weights, None, 0.0)
    assert not np.allclose(np.asarray(target[0]), np.asarray(got[0]), rtol=1e-4)


def test_slow_critic_regulariser_adds_its_weighted_distance_to_the_target_critic(setup):
    """critic.slow_reg = ρ adds ρ·mean w·(V(s) − V_target(s))² over the imagined states to the
    imagined term (DreamerV3's slow-critic regulariser), and nothing when the two critics agree."""
    agent, state, batch, imagined, weights = setup
    rho = 0.7
    reg_agent = make_agent(small_config(**{"critic.slow_reg": rho}), agent.spec)
    moved = _moved_target(state)
    base = _loss_and_grad(agent, moved, batch, imagined, weights, None, 0.0)
    reg = _loss_and_grad(reg_agent, moved, batch, imagined, weights, None, 0.0)
    critic = agent.nets.critic
    values = critic.apply(moved.critic_params, imagined.states[:-1])
    slow = critic.apply(moved.critic_target_params, imagined.states[:-1])
    w = jnp.broadcast_to(weights[None], values.shape)
    expected = losses.masked_mean((values - slow) ** 2, w)
    assert float(expected) > 1e-3
    _close(reg[1]["critic_slow_reg_loss"], expected)
    _close(reg[0], base[0] + rho * expected)
    # Its gradient is ρ·∂/∂θ of that distance, added to the λ-return term's.
    dist_grad = jax.grad(
        lambda p: losses.masked_mean((critic.apply(p, imagined.states[:-1]) - slow) ** 2, w)
    )(moved.critic_params)
    _close(reg[2], jax.tree.map(lambda g, d: g + rho * d, base[2], dist_grad), rtol=1e-4)
    # With the target critic equal to the online one the regulariser is zero.
    same = moved.replace(critic_target_params=moved.critic_params)
    _close(
        _loss_and_grad(reg_agent, same, batch, imagined, weights, None, 0.0)[1][
            "critic_slow_reg_loss"
        ],
        0.0,
    )
