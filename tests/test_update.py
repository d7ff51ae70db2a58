"""The three-optimiser contract: each update writes only its own parameters, gradients reach the
policy through the world model, and flat and sequence modes agree."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_spec, random_sequence, random_transitions, small_config
from jax.flatten_util import ravel_pytree

from wm_jax import losses
from wm_jax.agent import gradient_clip
from wm_jax.returns import lambda_returns, return_scale
from wm_jax.schedule import UpdateCounts
from wm_jax.update import (
    actor_loss_fn,
    expected_updates,
    imagine_from_batch,
    init_state,
    make_agent,
    make_optimizer,
    make_steps,
    nonfinite_streak,
    world_model_loss,
)


def trees_equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


def trees_all_differ(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: not jnp.array_equal(x, y), a, b)))


def _setup(kind):
    spec = (
        make_spec(discrete=True)
        if kind == "discrete"
        else make_spec(obs_shape=(3,), action_dim=1, discrete=False)
    )
    agent = make_agent(small_config(), spec)
    steps = make_steps(agent)
    state = steps.init(jax.random.PRNGKey(0))
    # One full train step first so no parameter sits at an initial zero (e.g. the value head).
    batch = random_transitions(jax.random.PRNGKey(1), spec)
    state, _ = steps.train_step(state, batch, UpdateCounts(1, 1, 1), 0.0)
    return agent, steps, state, batch


@pytest.fixture(scope="module")
def discrete_setup():
    """One action kind: for world-model-side properties that do not depend on it."""
    return _setup("discrete")


@pytest.fixture(scope="module")
def continuous_setup():
    return _setup("continuous")


@pytest.fixture(params=["discrete", "continuous"])
def setup(request):
    """Both action kinds: for the properties that depend on how actions are produced."""
    return request.getfixturevalue(f"{request.param}_setup")


def test_actor_update_leaves_world_model_and_critic_bit_identical(setup):
    agent, steps, state, batch = setup
    new, metrics, _, _ = steps.actor_update(state, batch)
    assert trees_equal(new.wm_params, state.wm_params)
    assert trees_equal(new.critic_params, state.critic_params)
    assert trees_equal(new.wm_opt_state, state.wm_opt_state)
    assert trees_equal(new.critic_opt_state, state.critic_opt_state)
    assert not trees_equal(new.actor_params, state.actor_params)
    assert int(new.actor_updates) == int(state.actor_updates) + 1
    assert float(metrics["actor_grad_norm"]) > 0


def test_critic_update_changes_only_the_critic(setup):
    agent, steps, state, batch = setup
    imagined, weights = jax.jit(functools.partial(imagine_from_batch, agent))(
        state, state.actor_params, batch, jax.random.PRNGKey(2)
    )
    new, metrics = steps.critic_update(state, batch, imagined, weights, 0.5)
    assert trees_equal(new.wm_params, state.wm_params)
    assert trees_equal(new.actor_params, state.actor_params)
    assert trees_equal(new.actor_opt_state, state.actor_opt_state)
    assert not trees_equal(new.critic_params, state.critic_params)
    # τ = 1 (the seeds' default): the target critic is the online critic.
    assert trees_equal(new.critic_target_params, new.critic_params)
    for name in ("critic_loss", "critic_td_error_mean", "critic_explained_variance"):
        assert np.isfinite(float(metrics[name]))


def test_world_model_update_changes_only_the_world_model(discrete_setup):
    agent, steps, state, batch = discrete_setup
    new, _ = steps.world_model_update(state, batch)
    assert trees_equal(new.actor_params, state.actor_params)
    assert trees_equal(new.critic_params, state.critic_params)
    assert not trees_equal(new.wm_params, state.wm_params)


def test_world_model_gradient_equals_gradient_of_world_model_loss_alone(discrete_setup):
    """What the prototype's save/restore trick aimed for: adding the actor loss (which reads the
    world model) to the objective does not change the world model's gradient."""
    agent, steps, state, batch = discrete_setup
    key = jax.random.PRNGKey(3)

    def wm_only(wm_params):
        return world_model_loss(agent, wm_params, batch, key)[0]

    def wm_plus_actor(wm_params):
        s = state.replace(wm_params=wm_params)
        actor = actor_loss_fn(s.actor_params, agent, s, batch, key)[0]
        return world_model_loss(agent, wm_params, batch, key)[0] + actor

    g_alone = jax.jit(jax.grad(wm_only))(state.wm_params)
    g_joint = jax.jit(jax.grad(wm_plus_actor))(state.wm_params)
    assert trees_equal(g_alone, g_joint)
    # And world_model_update applies exactly the clipped Adam step of that gradient (it draws
    # its loss key as the second half of a split of the state's key).
    step_key = jax.random.split(state.key)[1]
    g_step = jax.jit(jax.grad(lambda p: world_model_loss(agent, p, batch, step_key)[0]))(
        state.wm_params
    )
    updates, _ = agent.wm_optimizer.update(g_step, state.wm_opt_state, state.wm_params)
    new, _ = steps.world_model_update(state, batch)
    np.testing.assert_allclose(
        ravel_pytree(new.wm_params)[0],
        ravel_pytree(optax.apply_updates(state.wm_params, updates))[0],
        rtol=1e-6,
        atol=1e-7,
    )


def test_actor_gradient_reaches_policy_through_the_dynamics(setup):
    """With no entropy bonus, the only path from actor parameters to the loss is actions ->
    dynamics -> reward / continue / value.  Freezing that path (REINFORCE-style detached actions
    with a zero baseline weight) must remove the gradient; keeping it must give a non-zero one."""
    agent, _, state, batch = setup
    cfg = small_config(**{"actor.entropy_coef": 0.0})
    agent0 = make_agent(cfg, agent.spec)
    key = jax.random.PRNGKey(4)
    grad = jax.jit(jax.grad(lambda p: actor_loss_fn(p, agent0, state, batch, key)[0]))(
        state.actor_params
    )
    norm = float(optax.tree.norm(grad))
    assert norm > 1e-6, norm

    # Cut the path through the dynamics: the world model ignores actions when its action
    # weights are zero, so the policy's gradient must vanish.
    def zero_action_weights(path, x):
        names = [getattr(k, "key", None) for k in path]
        if "dynamics" in names and "Dense_0" in names and names[-1] == "kernel":
            return x.at[-agent.spec.action_dim :].set(0.0)
        return x

    blind = state.replace(
        wm_params=jax.tree_util.tree_map_with_path(zero_action_weights, state.wm_params)
    )
    grad0 = jax.jit(jax.grad(lambda p: actor_loss_fn(p, agent0, blind, batch, key)[0]))(
        state.actor_params
    )
    assert float(optax.tree.norm(grad0)) < 1e-6 * max(norm, 1.0)


def test_reinforce_rescoring_matches_differentiating_through_the_rollout(discrete_setup):
    """REINFORCE re-scores the policy on the finished trajectory in one batched pass; its loss and
    gradient must equal those of log-probs taken inside the scan with detached actions (for the
    discrete policy, whose entropy is exact; the continuous entropy uses a fresh sample)."""
    agent, _, state, batch = discrete_setup
    cfg = small_config(**{"actor.gradient": "reinforce", "actor.return_norm": True})
    agent_r = make_agent(cfg, agent.spec)
    key = jax.random.PRNGKey(5)

    def through_scan(p):
        rollout_key = jax.random.split(key)[0]
        imagined, weights = imagine_from_batch(agent_r, state, p, batch, rollout_key)
        returns = lambda_returns(
            imagined.rewards, imagined.continues, imagined.values[1:], 0.99, 0.95
        )
        w = jnp.broadcast_to(weights[None], returns.shape)
        return losses.actor_loss(
            imagined,
            returns,
            w,
            cfg.actor.entropy_coef,
            "reinforce",
            imagined.values[:-1],
            return_scale(returns, w),
        )[0]

    rescored = jax.jit(
        jax.value_and_grad(lambda p: actor_loss_fn(p, agent_r, state, batch, key)[0])
    )
    (loss_a, grad_a), (loss_b, grad_b) = (
        rescored(state.actor_params),
        jax.jit(jax.value_and_grad(through_scan))(state.actor_params),
    )
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        ravel_pytree(grad_a)[0], ravel_pytree(grad_b)[0], rtol=1e-4, atol=1e-7
    )
    assert float(optax.tree.norm(grad_a)) > 1e-6


def test_flat_and_sequence_modes_give_the_same_single_step_losses():
    spec = make_spec(discrete=True)
    agent = make_agent(small_config(**{"world_model.multi_step_scale": 0.0}), spec)
    state = jax.jit(functools.partial(init_state, agent))(jax.random.PRNGKey(0))
    seq = random_sequence(jax.random.PRNGKey(5), spec, batch=3, length=4, terminate_at=2)
    flat = seq.to_transitions()
    key = jax.random.PRNGKey(6)
    loss = jax.jit(functools.partial(world_model_loss, agent))
    _, m_seq = loss(state.wm_params, seq, key)
    _, m_flat = loss(state.wm_params, flat, key)
    for name in ("dynamics_loss", "reward_loss", "continue_loss", "continue_accuracy"):
        np.testing.assert_allclose(m_seq[name], m_flat[name], rtol=1e-5, err_msg=name)
    assert "multi_step_loss" not in m_seq


def test_sequence_mode_adds_the_multi_step_loss(discrete_setup):
    agent, steps, state, _ = discrete_setup
    seq = random_sequence(jax.random.PRNGKey(7), agent.spec, batch=2, length=4)
    _, metrics = steps.train_step(state, seq, UpdateCounts(1, 1, 1), 0.5)
    assert np.isfinite(float(metrics["multi_step_loss"]))
    assert np.isfinite(float(metrics["critic_loss_real"]))


def test_train_step_honours_update_counts(discrete_setup):
    agent, steps, state, batch = discrete_setup
    warm, metrics = steps.train_step(state, batch, UpdateCounts(2, 0, 0), 1.0)
    assert int(warm.wm_updates) == int(state.wm_updates) + 2
    assert trees_equal(warm.actor_params, state.actor_params)
    assert trees_equal(warm.critic_params, state.critic_params)
    assert "actor_loss" not in metrics and "world_model_loss" in metrics
    critic_only, metrics = steps.train_step(state, batch, UpdateCounts(0, 0, 1), 0.0)
    assert int(critic_only.critic_updates) == int(state.critic_updates) + 1
    assert trees_equal(critic_only.actor_params, state.actor_params)


def test_every_metric_is_a_finite_scalar(setup):
    agent, steps, state, batch = setup
    _, metrics = steps.train_step(state, batch, UpdateCounts(1, 1, 1), 0.3)
    for name, value in metrics.items():
        assert np.shape(value) == (), name
        assert np.isfinite(float(value)), name
    for name in (
        "encoder",
        "representation",
        "dynamics",
        "reward_predictor",
        "continue_predictor",
        "decoder",
        "world_model",
        "actor",
        "critic",
    ):
        assert f"{name}_grad_norm" in metrics


def test_nonfinite_batch_skips_every_update_and_leaves_the_state_unchanged(discrete_setup):
    """A NaN in the batch makes every loss and gradient non-finite: all three optimisers must skip
    (parameters and Adam moments bit-identical), count the skip, and resume on a clean batch."""
    agent, steps, state, batch = discrete_setup
    bad = batch.replace(obs=batch.obs.at[0, 0].set(jnp.nan))
    new, metrics = steps.train_step(state, bad, UpdateCounts(1, 1, 1), 0.0)
    for name in ("wm", "actor", "critic"):
        assert trees_equal(getattr(new, f"{name}_params"), getattr(state, f"{name}_params"))
        assert trees_equal(
            getattr(new, f"{name}_opt_state").inner_state,
            getattr(state, f"{name}_opt_state").inner_state,
        )
    for group in ("world_model", "actor", "critic"):
        assert float(metrics[f"{group}_update_skipped"]) == 1.0
    assert int(nonfinite_streak(new.wm_opt_state)) == 1
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new.critic_target_params))

    recovered, metrics = steps.train_step(new, batch, UpdateCounts(1, 1, 1), 0.0)
    assert float(metrics["world_model_update_skipped"]) == 0.0
    assert int(nonfinite_streak(recovered.wm_opt_state)) == 0
    assert not trees_equal(recovered.wm_params, state.wm_params)


def test_return_normalisation_can_use_an_ema_of_the_percentiles(discrete_setup):
    agent, _, state, batch = discrete_setup
    key = jax.random.PRNGKey(9)

    def range_and_scale(decay, start):
        cfg = small_config(**{"actor.return_norm": True, "actor.return_norm_decay": decay})
        ag = make_agent(cfg, agent.spec)
        s = state.replace(return_range=jnp.asarray(start, jnp.float32))
        _, (metrics, _, _, new_range) = jax.jit(lambda p: actor_loss_fn(p, ag, s, batch, key))(
            s.actor_params
        )
        return np.asarray(new_range), float(metrics["return_scale"])

    batch_range, batch_scale = range_and_scale(0.0, [0.0, 0.0])  # this batch's P5, P95
    assert batch_range[1] >= batch_range[0]
    assert batch_scale == pytest.approx(max(1.0, batch_range[1] - batch_range[0]), rel=1e-6)
    ema, ema_scale = range_and_scale(0.9, [-20.0, 40.0])
    np.testing.assert_allclose(ema, 0.9 * np.array([-20.0, 40.0]) + 0.1 * batch_range, rtol=1e-5)
    assert ema_scale == pytest.approx(ema[1] - ema[0], rel=1e-5)


def test_learning_rate_anneals_linearly_to_its_final_scale_then_holds():
    group = small_config().actor
    group.lr, group.lr_final_scale, group.grad_clip = 1e-2, 0.1, 1e6
    opt = make_optimizer(group, anneal_updates=10)
    params = jnp.zeros(3)
    state = opt.init(params)
    steps = []
    for _ in range(14):
        # A constant gradient makes Adam's step equal to the learning rate.
        updates, state = opt.update(jnp.ones(3), state, params)
        steps.append(float(-updates[0]))
    expected = [1e-2 - 9e-3 * min(k, 10) / 10 for k in range(14)]
    np.testing.assert_allclose(steps, expected, rtol=1e-3)
    # lr_final_scale = 1 keeps the plain constant-lr Adam (same state structure as before).
    group.lr_final_scale = 1.0
    flat_state = make_optimizer(group, anneal_updates=10).init(params)
    assert jax.tree.structure(flat_state) != jax.tree.structure(state)


def test_expected_updates_follow_the_schedule():
    c = small_config(total_env_steps=10_000, prefill_steps=1_000, train_ratio=0.5)
    c.schedule.warmup_steps, c.schedule.critic_updates = 2_000, 2
    assert expected_updates(c, "world_model") == 4_500
    assert expected_updates(c, "actor") == 4_000
    assert expected_updates(c, "critic") == 8_000


def test_per_module_clip_leaves_a_small_module_alone_where_the_global_clip_scales_it_down():
    group = small_config().world_model
    group.grad_clip = 1.0
    grads = {
        "params": {
            "reward": {"kernel": jnp.full((4,), 400.0)},  # norm 800: a learned σ at its floor
            "encoder": {"kernel": jnp.array([0.3, 0.4]), "bias": jnp.zeros(2)},  # norm 0.5
        }
    }
    params = jax.tree.map(jnp.ones_like, grads)

    def clipped(mode):
        group.grad_clip_mode = mode
        return gradient_clip(group).update(grads, gradient_clip(group).init(params), params)[0]

    per_module, global_ = clipped("per_module"), clipped("global")
    # Each module is clipped exactly as clip_by_global_norm clips it alone.
    for name, module in grads["params"].items():
        alone = optax.clip_by_global_norm(1.0).update(module, optax.EmptyState())[0]
        assert trees_equal(per_module["params"][name], alone)
    np.testing.assert_allclose(per_module["params"]["encoder"]["kernel"], [0.3, 0.4])
    assert float(optax.tree.norm(per_module["params"]["reward"])) == pytest.approx(1.0, rel=1e-6)
    # One clip for the tree scales the encoder's step by the reward's norm.
    encoder_norm = float(optax.tree.norm(global_["params"]["encoder"]))
    assert encoder_norm == pytest.approx(0.5 / 800.5, rel=1e-3)
    # "adaptive" is optax's unit-wise clip relative to the parameters' norm.
    group.grad_clip = 0.3
    expected = optax.adaptive_grad_clip(0.3).update(grads, optax.EmptyState(), params)[0]
    assert trees_equal(clipped("adaptive"), expected)


@pytest.mark.parametrize("mode", ["per_module", "adaptive"])
def test_every_clip_mode_trains_all_three_optimisers(mode):
    c = small_config()
    for group in (c.world_model, c.actor, c.critic):
        group.grad_clip_mode = mode
    spec = make_spec(discrete=True)
    steps = make_steps(make_agent(c, spec))
    state = steps.init(jax.random.PRNGKey(0))
    batch = random_transitions(jax.random.PRNGKey(1), spec)
    new, metrics = steps.train_step(state, batch, UpdateCounts(1, 1, 1), 0.0)
    for name in ("wm_params", "actor_params", "critic_params"):
        assert not trees_equal(getattr(new, name), getattr(state, name)), name
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_an_unknown_clip_mode_is_refused_by_name():
    c = small_config()
    c.critic.grad_clip_mode = "layerwise"
    with pytest.raises(ValueError, match="critic.grad_clip_mode"):
        make_agent(c, make_spec(discrete=True))
