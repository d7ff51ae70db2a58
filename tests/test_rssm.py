"""The RSSM: prior/posterior shapes, KL balancing and free-bits arithmetic, step-by-step acting
that reads a sequence exactly as training does, and a trainer run that resumes exactly."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import checkpoint_arrays, make_spec, random_sequence, small_config

from wm_jax import losses
from wm_jax.config import ConfigError, validate
from wm_jax.networks import state_size
from wm_jax.networks.common import matmul_precision
from wm_jax.networks.rssm import GRUCell, unimix_logits
from wm_jax.observe import observe_sequence, observe_step
from wm_jax.schedule import UpdateCounts
from wm_jax.trainer import Trainer
from wm_jax.update import init_state, make_agent, make_steps

DETER, STOCH, CLASSES = 16, 3, 5


def rssm_config(**overrides):
    return small_config(
        **{
            "model.representation": "rssm",
            "model.dynamics": "rssm",
            "model.rssm_deter": DETER,
            "model.rssm_stoch": STOCH,
            "model.rssm_classes": CLASSES,
            "sequence_mode": True,
            "batch_size": 3,
            "sequence_length": 6,
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def rssm():
    spec = make_spec()
    agent = make_agent(rssm_config(), spec)
    state = init_state(agent, jax.random.PRNGKey(0))
    batch = random_sequence(jax.random.PRNGKey(1), spec, batch=3, length=6)
    return agent, state, batch


def test_prior_and_posterior_shapes_and_state_layout(rssm):
    agent, state, batch = rssm
    wm = agent.nets.world_model
    out = observe_sequence(wm, state.wm_params, batch.obs, batch.action, jax.random.PRNGKey(2))
    size = DETER + STOCH * CLASSES
    assert state_size(agent.config) == size
    assert out.states.shape == (3, 7, size)
    assert out.post_logits.shape == (3, 7, STOCH, CLASSES)
    assert out.prior_logits.shape == (3, 6, STOCH, CLASSES)
    for logits in (out.post_logits, out.prior_logits):
        np.testing.assert_allclose(jnp.exp(logits).sum(-1), 1.0, rtol=1e-5)
        # unimix keeps every class possible, so the KL stays finite
        assert float(jnp.exp(logits).min()) >= 0.01 / CLASSES * 0.999
    z = out.states[..., DETER:].reshape(3, 7, STOCH, CLASSES)
    # one-hot samples (straight-through: exact up to float rounding)
    np.testing.assert_allclose(z.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(z.max(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(out.states[:, 0, :DETER], 0.0)  # a window starts from h = 0
    # imagination's interface: the prior as a next-state distribution of the same size
    prior = wm.apply(state.wm_params, out.states[:, 0], batch.action[:, 0], method=wm.predict_next)
    assert prior.mean().shape == prior.sample(seed=jax.random.PRNGKey(3)).shape == (3, size)


def test_gru_cell_is_flax_gru_cell_and_follows_the_matmul_precision():
    """Same parameters (names, shapes, initial values: old checkpoints load), the same float32
    outputs and gradients bit for bit, and bf16 matmuls under ``precision=bfloat16``."""
    import flax.linen as nn

    h = jax.random.normal(jax.random.key(1), (8, 16))
    x = jax.random.normal(jax.random.key(2), (8, 12))
    ref, ours = nn.GRUCell(16), GRUCell(16)
    params = ref.init(jax.random.key(0), h, x)
    same = lambda a, b: jax.tree.all(jax.tree.map(lambda u, v: bool((u == v).all()), a, b))  # noqa: E731
    assert same(ours.init(jax.random.key(0), h, x), params)
    ref_fn = jax.jit(lambda p: ref.apply(p, h, x)[0])
    assert same(jax.jit(lambda p: ours.apply(p, h, x))(params), ref_fn(params))
    grad_ours = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(ours.apply(p, h, x)))))
    grad_ref = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(ref.apply(p, h, x)[0]))))
    assert same(grad_ours(params), grad_ref(params))
    with matmul_precision("bfloat16"):
        low = jax.jit(lambda p: ours.apply(p, h, x))(params)
    diff = float(jnp.max(jnp.abs(low - ref_fn(params))))
    assert 0 < diff < 0.05  # bf16 inputs: close to, but not, the float32 result


def test_kl_balancing_splits_the_gradient_and_free_bits_stop_it():
    key_q, key_p = jax.random.split(jax.random.PRNGKey(0))
    post = unimix_logits(jax.random.normal(key_q, (2, 4, STOCH, CLASSES)) * 3, 0.01)
    prior = unimix_logits(jax.random.normal(key_p, (2, 4, STOCH, CLASSES)) * 3, 0.01)
    mask = jnp.ones((2, 4))
    p, q = np.exp(np.asarray(post)), np.exp(np.asarray(prior))
    manual = np.sum(p * (np.asarray(post) - np.asarray(prior)), axis=(-2, -1)).mean()
    np.testing.assert_allclose(losses.categorical_kl(post, prior).mean(), manual, rtol=1e-5)
    assert manual > 0 and np.all(q > 0)

    def loss(post, prior, balance, free_bits=0.0):
        return losses.latent_kl_loss(post, prior, mask, balance, free_bits)[0]

    loss_value, metrics = losses.latent_kl_loss(post, prior, mask, 0.8, 0.0)
    np.testing.assert_allclose(loss_value, manual, rtol=1e-5)  # α·KL + (1-α)·KL = KL
    np.testing.assert_allclose(metrics["kl_dynamics"], manual, rtol=1e-5)
    # The prior gets α of the full KL gradient, the posterior 1 - α.
    full_prior = jax.grad(loss, argnums=1)(post, prior, 1.0)
    full_post = jax.grad(loss, argnums=0)(post, prior, 0.0)
    g_prior, g_post = jax.grad(loss, argnums=(1, 0))(post, prior, 0.8)
    np.testing.assert_allclose(g_prior, 0.8 * full_prior, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(g_post, 0.2 * full_post, rtol=1e-5, atol=1e-8)
    # Free bits above every step's KL: the loss is the constant b and nothing is pushed.
    big = float(losses.categorical_kl(post, prior).max()) + 1.0
    np.testing.assert_allclose(loss(post, prior, 0.8, big), big, rtol=1e-6)
    grads = jax.grad(loss, argnums=(0, 1))(post, prior, 0.8, big)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)
    # Padded steps count for nothing.
    half = mask.at[:, 2:].set(0.0)
    np.testing.assert_allclose(
        losses.latent_kl_loss(post, prior, half, 0.8, 0.0)[0],
        losses.categorical_kl(post, prior)[:, :2].mean(),
        rtol=1e-5,
    )


def test_acting_step_by_step_reads_a_sequence_exactly_like_training(rssm):
    """observe_step carried along an episode gives the states observe_sequence gives for the
    same window, and is_first drops the past."""
    agent, state, batch = rssm
    wm = agent.nets.world_model
    seq = observe_sequence(wm, state.wm_params, batch.obs, batch.action, None).states
    carry = jnp.zeros_like(seq[:, 0])
    prev_action = jnp.zeros_like(batch.action[:, 0])
    first = jnp.ones(3, bool)
    for t in range(batch.obs.shape[1]):
        carry = observe_step(wm, state.wm_params, carry, prev_action, batch.obs[:, t], first, None)
        np.testing.assert_allclose(carry, seq[:, t], rtol=1e-5, atol=1e-5)
        if t < batch.action.shape[1]:
            prev_action = batch.action[:, t]
        first = jnp.zeros(3, bool)
    restarted = observe_step(
        wm, state.wm_params, carry, prev_action, batch.obs[:, 0], jnp.ones(3, bool), None
    )
    np.testing.assert_allclose(restarted, seq[:, 0], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def rssm_step(rssm):
    """One compiled RSSM train step and its result (shared: compiling it is the cost)."""
    agent, state, batch = rssm
    steps = make_steps(agent)
    new, metrics = steps.train_step(state, batch, UpdateCounts(1, 1, 1), 0.5)
    return steps, new, metrics


def test_world_model_update_trains_the_kl_and_every_component(rssm_step):
    _, _, metrics = rssm_step
    for name in ("dynamics_loss", "kl_dynamics", "kl_representation", "reward_loss", "actor_loss"):
        assert np.isfinite(float(metrics[name])), name
    for name in ("encoder", "representation", "dynamics", "decoder", "reward_predictor"):
        assert float(metrics[f"{name}_grad_norm"]) > 0, name
    assert "representation_recon" not in metrics  # no autoencoder term for the RSSM


@pytest.mark.slow
def test_train_step_reads_the_batch_once_with_the_same_result_as_separate_updates(rssm, rssm_step):
    # train_step shares one observe_batch between the actor and the critic; each update called
    # on its own reads the batch itself.  Both paths must give the same parameters and metrics.
    _, state, batch = rssm
    steps, fused, fused_metrics = rssm_step
    s, _ = steps.world_model_update(state, batch)
    s, actor_metrics, imagined, weights = steps.actor_update(s, batch)
    s, critic_metrics = steps.critic_update(s, batch, imagined, weights, 0.5)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6)
    jax.tree.map(close, fused.actor_params, s.actor_params)
    jax.tree.map(close, fused.critic_params, s.critic_params)
    for name in ("actor_loss", "mean_imagined_return", "critic_loss", "critic_loss_real"):
        separate = {**actor_metrics, **critic_metrics}[name]
        close(fused_metrics[name], separate, err_msg=name)


def test_rssm_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.dynamics"):
        validate(small_config(**{"model.representation": "rssm", "sequence_mode": True}))
    with pytest.raises(ConfigError, match="sequence_mode"):
        validate(rssm_config(sequence_mode=False))


# A run straight to the end, then the same run stopped at argv[3] and resumed, in one process
# (the second and third reuse the first's compiled programs) with the single-thread XLA flags
# under which CPU runs are bit-reproducible (BUILD_NOTES, "Determinism guarantee").
_RESUME_SCRIPT = r"""
import json, sys
sys.path.insert(0, "tests")
from test_rssm import rssm_config
from wm_jax.loops import train

root, overrides, stop_at = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
results = [train(rssm_config(**overrides), root + "/straight"),
           train(rssm_config(**overrides), root + "/resumed", stop_at=stop_at),
           train(rssm_config(**overrides), root + "/resumed")]
json.dump([[r.env_steps, r.resumed_from, r.eval_returns] for r in results],
          open(root + "/results.json", "w"))
"""


def _assert_resumed_run_equals_straight_run(tmp_path, overrides, stop_at):
    """Runs ``_RESUME_SCRIPT`` and checks that the resumed run ends with the straight run's
    whole final checkpoint, bit for bit (every parameter tree, optimiser state, key, counter,
    the replay, normaliser, env state and the acting carry), the same evaluations and the same
    metrics rows but for their wall-clock fields.  Returns both workdirs."""
    import json
    import subprocess
    import sys

    from conftest import DETERMINISTIC_ENV, REPO
    from test_crash_safety import metric_records

    cmd = [sys.executable, "-c", _RESUME_SCRIPT, str(tmp_path), json.dumps(overrides)]
    proc = subprocess.run(
        [*cmd, str(stop_at)],
        capture_output=True, text=True, cwd=REPO, env=DETERMINISTIC_ENV, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    straight, stopped, resumed = json.loads((tmp_path / "results.json").read_text())
    end = overrides["total_env_steps"]
    assert straight[:2] == [end, None] and stopped[:2] == [stop_at, None]
    assert resumed[:2] == [end, stop_at]
    assert resumed[2] == straight[2]  # (env step, mean, std) of every evaluation
    a = checkpoint_arrays(tmp_path / "straight")
    b = checkpoint_arrays(tmp_path / "resumed")
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    rows_a, rows_b = metric_records(tmp_path / "straight"), metric_records(tmp_path / "resumed")
    assert [r["env_step"] for r in rows_b] == [r["env_step"] for r in rows_a]
    for x, y in zip(rows_a, rows_b, strict=True):
        assert x == y, {
            k: (x.get(k), y.get(k)) for k in x.keys() | y.keys() if x.get(k) != y.get(k)
        }
    return checkpoint_arrays(tmp_path / "resumed", stop_at)


def _assert_stopped_mid_episode(is_first, state):
    """The stop fell inside an episode of some env after acting began: the acting carry
    (``is_first [N]``, ``state [N, S]`` at the stop) holds a state that the resume must keep."""
    continuing = ~np.asarray(is_first)
    assert continuing.any() and (np.abs(state[continuing]).max(-1) > 0).all()


@pytest.mark.slow
def test_rssm_trainer_run_resumes_exactly(tmp_path):
    """The host loop's recurrent acting state is part of the checkpoint: a run stopped
    mid-episode and resumed ends exactly as one that never stopped (whole state and metrics)."""
    overrides = {
        "total_env_steps": 192,
        "prefill_steps": 64,
        # Training starts after the warmup: one train-step program (world model, actor, critic).
        "schedule.warmup_steps": 64,
        "schedule.transition_steps": 128,
        "checkpoint_every": 112,
        "eval_every": 0,
        "log_every": 64,
        "diagnostics.open_loop_every": 0,
        "report": False,
        "num_envs": 2,
        "train_ratio": 0.125,
        # Correlated exploration: its noise is acting state the checkpoint must keep too; it
        # ends at 144, between the two halves of the stopped run.
        "actor.explore_correlation": 0.9,
        "actor.explore_correlation_steps": 144,
    }
    # Stopped between two log steps (64, 192): the row in progress is part of the checkpoint.
    stopped = _assert_resumed_run_equals_straight_run(tmp_path, overrides, stop_at=160)
    carry = "['extras']['act_carry']"
    _assert_stopped_mid_episode(stopped[carry + "['is_first']"], stopped[carry + "['state']"])
    assert np.abs(stopped[carry + "['noise']"]).max() > 0


@pytest.mark.slow
def test_rssm_device_loop_carries_the_policy_state_and_resumes_exactly(tmp_path):
    """In the on-device loop the acting carry is part of the loop state and its checkpoint: a
    run stopped mid-episode and resumed ends exactly as one that never stopped (whole state,
    evaluations and metrics)."""
    overrides = dict(
        env_id="gymnax:CartPole-v1",
        loop="device",
        total_env_steps=192,
        prefill_steps=64,  # = the warmup: one train-step program (world model, actor, critic)
        # Every training segment 64 env steps long: one compiled segment program.
        eval_every=64,
        eval_episodes=2,
        log_every=64,
        checkpoint_every=64,
        report=False,
        num_envs=4,
        train_ratio=0.25,
        **{
            "schedule.warmup_steps": 64,
            "schedule.transition_steps": 128,
            "diagnostics.open_loop_every": 0,
            "actor.explore_correlation": 0.9,  # its noise is loop state too
            "actor.explore_correlation_steps": 96,  # ends inside the first training segment
        },
    )
    from wm_jax.device_loop import DeviceLoop

    stopped = _assert_resumed_run_equals_straight_run(tmp_path, overrides, stop_at=128)
    # The checkpoint keeps the LoopState but its train state as numbered arrays, in the order
    # of the LoopState's leaves.
    loop = DeviceLoop(rssm_config(**overrides))
    shape = jax.eval_shape(lambda: loop.init(0))
    leaves = jax.tree_util.tree_flatten_with_path(shape.replace(train=None))[0]
    loop_state = {
        jax.tree_util.keystr(path): stopped[f"['extras']['device_loop']['{i:04d}']"]
        for i, (path, _) in enumerate(leaves)
    }
    assert loop_state[".env_step"] == 128
    _assert_stopped_mid_episode(loop_state[".act_carry.is_first"], loop_state[".act_carry.state"])
    assert np.abs(loop_state[".act_carry.noise"]).max() > 0


def test_the_device_loop_resets_the_acting_state_where_an_episode_ends():
    """The policy's recurrent state starts over in every env whose episode ended (terminated
    or truncated): the state read from the next episode's first observation has h = 0, as at
    the start of a training window, while the envs whose episode goes on keep their h."""
    from wm_jax.device_loop import DeviceLoop

    config = rssm_config(
        env_id="gymnax:CartPole-v1",
        loop="device",
        num_envs=4,
        train_ratio=0.25,  # one vector step per loop iteration
        replay_capacity=256,
        env_kwargs={"max_steps_in_episode": 12},  # truncations as well as terminations
        **{"diagnostics.open_loop_every": 0},
    )
    loop = DeviceLoop(config)
    act_and_step = loop.segment(1, None, False, 1)  # a policy step of every env, no training
    ls = loop.init(0)
    h = lambda ls: np.asarray(ls.act_carry.state)[:, :DETER]  # noqa: E731
    ended = np.ones(4, bool)  # the initial carry: every env at an episode's start
    terminated = truncated = continuing = 0
    for _ in range(40):
        episode = np.asarray(ls.episode)
        ls, _ = act_and_step(ls)  # (donates ls)
        # The state acting read this step's observation into: reset where the last step ended
        # an episode, carried on elsewhere.
        np.testing.assert_array_equal(h(ls)[ended], 0.0)
        assert (np.abs(h(ls)[~ended]).max(-1) > 0).all()
        continuing += int((~ended).sum())
        ended = np.asarray(ls.episode) > episode
        cont = np.asarray(ls.replay.cont)[(int(ls.replay.head) - 1) % ls.replay.capacity]
        terminated += int((ended & (cont == 0)).sum())
        truncated += int((ended & (cont == 1)).sum())
    assert terminated > 0 and truncated > 0 and continuing > 0, (terminated, truncated)


@pytest.mark.slow
def test_reset_on_a_loaded_rssm_policy_forgets_the_steps_it_acted_on(tmp_path):
    """``Policy.reset()`` on a policy from ``load_policy`` clears the RSSM's acting state: after
    acting on other observations and a reset, the same observations give the same actions and
    states as on a freshly loaded policy (and without the reset they would not)."""
    from wm_jax import load_policy

    config = rssm_config(  # random-action collection only: a checkpoint without a train step
        total_env_steps=16,
        prefill_steps=10_000,
        eval_every=0,
        log_every=16,
        checkpoint_every=16,
        report=False,
        **{"diagnostics.open_loop_every": 0},
    )
    trainer = Trainer(config, str(tmp_path / "run"))
    try:
        trainer.run()
    finally:
        trainer.close()
    rng = np.random.default_rng(0)
    seen = rng.normal(size=(5, 3, 4)).astype(np.float32)  # 5 steps of 3 envs
    others = rng.normal(size=(4, 3, 4)).astype(np.float32)

    def acting(policy, observations):
        steps = []
        for obs in observations:
            actions = policy.agent_actions(obs)
            steps.append((actions, np.asarray(policy._carry.state)))
        return steps

    fresh = acting(load_policy(str(tmp_path / "run")), seen)
    policy = load_policy(str(tmp_path / "run"))
    acting(policy, others)
    remembering = acting(policy, seen)  # the same observations on top of the others
    acting(policy, others)
    policy.reset()
    after_reset = acting(policy, seen)
    for (a, s), (b, t) in zip(fresh, after_reset, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(s, t)
    # The acting state carries the past: without the reset the same observations read differently.
    assert not np.array_equal(remembering[0][1], fresh[0][1])
