"""Episode boundaries, masks and window edges (issue 19): padded steps of a replayed window must
change nothing.  Every check compares a padded window against an independent reference on the
*unpadded* segment: ``rlax.lambda_returns`` for the real-data critic targets, and the world-model
losses of the segment alone (a window of exactly its real steps, no mask) for every loss term.

Windows come from both replays, written with episodes that end by truncation (``cont = 1``), by
termination (``cont = 0``) and one still running at the newest stored step.  The host replay pads
by repeating the last real step; the device replay leaves the next episode's data in masked steps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax
from conftest import make_spec, small_config

from wm_jax import losses
from wm_jax.device_loop import replay_add, replay_init, replay_sample_sequences
from wm_jax.replay import ReplayBuffer
from wm_jax.returns import lambda_returns
from wm_jax.types import Sequence
from wm_jax.update import (
    init_state,
    make_agent,
    observe_batch,
    real_value_targets,
    start_states,
    world_model_loss,
)

T = 8  # window length
# Episode lengths and how each ends: a time limit before the window ends (the case), a
# termination, a long truncated one, and one still running when sampling starts (newest step).
EPISODES = ((5, "truncated"), (3, "terminated"), (11, "truncated"), (6, "running"))
OBS, ACTIONS = (4,), 2


def _stream(seed=0):
    """``(obs, action, reward, next_obs, terminated, truncated, episode)`` per step, one env."""
    rng = np.random.default_rng(seed)
    steps = []
    for ep, (length, end) in enumerate(EPISODES):
        obs = rng.normal(size=OBS).astype(np.float32)
        for k in range(length):
            nxt = rng.normal(size=OBS).astype(np.float32)
            last = k == length - 1
            steps.append(
                (
                    obs,
                    np.eye(ACTIONS, dtype=np.float32)[rng.integers(ACTIONS)],
                    np.float32(rng.normal() - 1.0),
                    nxt,
                    last and end == "terminated",
                    last and end == "truncated",
                    ep,
                )
            )
            obs = nxt
    return steps


def host_windows(batch=48) -> Sequence:
    buf = ReplayBuffer(200, 1, OBS, np.float32, ACTIONS)
    for obs, a, r, nxt, term, trunc, _ in _stream():
        buf.add(obs[None], a[None], np.array([r]), nxt[None], np.array([term]), np.array([trunc]))
    return jax.tree.map(jnp.asarray, buf.sample_sequences(np.random.default_rng(1), batch, T))


def device_windows(batch=48) -> Sequence:
    r = replay_init(64, 1, make_spec(obs_shape=OBS, action_dim=ACTIONS))
    for obs, a, rew, nxt, term, _, ep in _stream():
        r = replay_add(
            r,
            jnp.asarray(obs[None]),
            jnp.asarray(a[None]),
            jnp.asarray([rew]),
            jnp.asarray([1.0 - float(term)]),
            jnp.asarray(nxt[None]),
            jnp.asarray([ep], jnp.int32),
        )
    return replay_sample_sequences(r, jax.random.PRNGKey(2), batch, T)


def segment(batch: Sequence, b: int) -> Sequence:
    """Window ``b``'s real steps alone: a length-``n`` window with no padding."""
    n = int(batch.mask[b].sum())
    assert np.all(np.asarray(batch.mask[b, :n]) == 1), "real steps must come first"
    return Sequence(
        obs=batch.obs[b : b + 1, : n + 1],
        action=batch.action[b : b + 1, :n],
        reward=batch.reward[b : b + 1, :n],
        cont=batch.cont[b : b + 1, :n],
        mask=jnp.ones((1, n)),
    )


def segments_by_length(batch: Sequence) -> dict[int, list[int]]:
    """Window indices grouped by their number of real steps."""
    groups: dict[int, list[int]] = {}
    for b in range(batch.reward.shape[0]):
        groups.setdefault(int(batch.mask[b].sum()), []).append(b)
    return groups


def stack_segments(batch: Sequence, rows: list[int]) -> Sequence:
    """The unpadded segments of windows ``rows`` (all with the same number of real steps)."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *(segment(batch, b) for b in rows))


def window(batch: Sequence, b: int) -> Sequence:
    return jax.tree.map(lambda x: x[b : b + 1], batch)


def kinds(batch: Sequence) -> set[str]:
    """Which boundary cases the sampled windows cover."""
    out = set()
    for b in range(batch.reward.shape[0]):
        n = int(batch.mask[b].sum())
        if n < T:
            out.add("truncated" if float(batch.cont[b, n - 1]) == 1.0 else "terminated")
    return out


def rssm_config():
    return small_config(
        **{
            "model.representation": "rssm",
            "model.dynamics": "rssm",
            "model.rssm_deter": 16,
            "model.rssm_stoch": 3,
            "model.rssm_classes": 5,
            "sequence_mode": True,
            "sequence_length": T,
        }
    )


@functools.cache
def agent_and_state(model: str):
    config = small_config(sequence_mode=True, sequence_length=T)
    if model == "rssm":
        config = rssm_config()
    elif model == "transformer":  # a context model: attention masks the padding
        config = small_config(
            **{
                "sequence_mode": True,
                "sequence_length": T,
                "model.dynamics": "transformer",
                "model.context_length": 4,
                "model.transformer_layers": 1,
                "model.transformer_heads": 2,
            }
        )
    agent = make_agent(config, make_spec(obs_shape=OBS, action_dim=ACTIONS))
    state = init_state(agent, jax.random.PRNGKey(0))
    # The value head starts at zero; give the target critic values worth bootstrapping.
    leaves, tree = jax.tree.flatten(state.critic_target_params)
    keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
    noisy = [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return agent, state.replace(critic_target_params=jax.tree.unflatten(tree, noisy))


REPLAYS = {"host": host_windows, "device": device_windows}


def test_the_sampled_windows_cover_every_boundary_case():
    for name, sample in REPLAYS.items():
        batch = sample()
        assert kinds(batch) == {"truncated", "terminated"}, name
        assert np.asarray(batch.mask).sum(1).min() < T and np.asarray(batch.mask).all(1).any()
    # Device replay: the steps after an episode end hold the next episode (never repeats).
    batch = device_windows()
    b = int(np.argmax(np.asarray(batch.mask).sum(1) < T))
    n = int(batch.mask[b].sum())
    assert not np.array_equal(np.asarray(batch.obs[b, n + 1]), np.asarray(batch.obs[b, n]))


# Slow tier: the reference runs the world model eagerly on every window (~25-60 s each).
@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "rssm"])
@pytest.mark.parametrize("replay", ["host", "device"])
def test_real_value_targets_equal_rlax_lambda_returns_on_the_unpadded_segment(model, replay):
    """The issue's case: a window that holds an episode truncated (or terminated, or stopped at
    the newest step) before the window ends.  Targets of the real steps are λ-returns of the
    real segment bootstrapped with ``V'(s')`` of its last real step; the TD-error monitor and
    the real-data critic loss equal those of the segment alone."""
    agent, state = agent_and_state(model)
    cfg = agent.config.imagination
    batch = REPLAYS[replay]()
    states, targets, weights = jax.jit(functools.partial(real_value_targets, agent))(state, batch)
    np.testing.assert_array_equal(weights, batch.mask)
    critic = agent.nets.critic
    values = critic.apply(state.critic_params, states)
    monitor = losses.td_error_monitor(values, targets, weights)
    observe = jax.jit(functools.partial(observe_batch, agent))
    critic_value = jax.jit(critic.apply)
    flat_v, flat_r = [], []
    # Windows with the same number of real steps share one jitted reference (a batch of their
    # unpadded segments); each segment is still a window of its real steps alone.
    for n, rows in segments_by_length(batch).items():
        seg = stack_segments(batch, rows)
        observed = observe(state.wm_params, seg)
        v_next = critic_value(state.critic_target_params, observed.next_states)
        v = critic_value(state.critic_params, observed.states)
        for i, b in enumerate(rows):
            expected = rlax.lambda_returns(
                seg.reward[i], cfg.gamma * seg.cont[i], v_next[i], cfg.lambda_
            )
            np.testing.assert_allclose(targets[b, :n], expected, rtol=1e-4, atol=1e-4)
            # The last real step: r + γ·c·V'(s'), never the padding's repeated reward.
            np.testing.assert_allclose(
                targets[b, n - 1],
                seg.reward[i, -1] + cfg.gamma * seg.cont[i, -1] * v_next[i, -1],
                rtol=1e-4,
                atol=1e-4,
            )
            flat_v.append(v[i])
            flat_r.append(expected)
    flat_v, flat_r = jnp.concatenate(flat_v), jnp.concatenate(flat_r)
    reference = losses.td_error_monitor(flat_v, flat_r, jnp.ones_like(flat_r))
    for key, value in reference.items():
        np.testing.assert_allclose(monitor[key], value, rtol=1e-4, atol=1e-4, err_msg=key)
    loss, _ = losses.critic_loss(values, targets, weights)
    ref_loss, _ = losses.critic_loss(flat_v, flat_r, jnp.ones_like(flat_r))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # as above: an eager world model per window
@pytest.mark.parametrize("model", ["mlp", "rssm", "transformer"])
@pytest.mark.parametrize("replay", ["host", "device"])
def test_world_model_losses_of_a_padded_window_equal_those_of_its_real_segment(model, replay):
    """Every world-model loss term and metric (dynamics/KL, reward, continue, decoder,
    representation, multi-step, state statistics) of a padded window equals that of the window
    of its real steps alone: padding contributes nothing, and the last real step's true next
    observation counts like any other observation."""
    agent, state = agent_and_state(model)
    loss_fn = jax.jit(functools.partial(world_model_loss, agent))
    batch = REPLAYS[replay]()
    key = jax.random.PRNGKey(4)
    picks = [rows[0] for rows in segments_by_length(batch).values()]  # one per length
    assert len(picks) >= 3
    for b in sorted(picks):
        _, padded = loss_fn(state.wm_params, window(batch, b), key)
        _, alone = loss_fn(state.wm_params, segment(batch, b), key)
        assert padded.keys() == alone.keys()
        for name in padded:
            np.testing.assert_allclose(
                padded[name], alone[name], rtol=2e-4, atol=1e-5, err_msg=f"{name}, window {b}"
            )


def test_masked_lambda_returns_equal_rlax_on_each_real_prefix_whatever_the_padding_holds():
    rng = np.random.default_rng(0)
    h, b, gamma, lam = 9, 6, 0.97, 0.9
    r = rng.normal(size=(h, b)).astype(np.float32)
    c = (rng.random((h, b)) > 0.2).astype(np.float32)
    v = rng.normal(size=(h, b)).astype(np.float32)
    n = np.array([1, 3, 5, 9, 2, 7])
    mask = (np.arange(h)[:, None] < n[None]).astype(np.float32)
    garbage = np.where(mask > 0, 0.0, 1e3 * rng.normal(size=(h, b))).astype(np.float32)
    out = lambda_returns(r + garbage, c, v + garbage, gamma, lam, mask=mask)
    for j in range(b):
        expected = rlax.lambda_returns(r[: n[j], j], gamma * c[: n[j], j], v[: n[j], j], lam)
        np.testing.assert_allclose(out[: n[j], j], expected, rtol=1e-5, atol=1e-5)
    # An all-ones mask is the plain recursion.
    np.testing.assert_allclose(
        lambda_returns(r, c, v, gamma, lam, mask=np.ones_like(r)),
        lambda_returns(r, c, v, gamma, lam),
        rtol=1e-6,
    )


def test_device_windows_never_mark_unwritten_slots_real():
    """A window longer than what the ring holds stops at the newest written step."""
    r = replay_init(16, 1, make_spec(obs_shape=OBS, action_dim=ACTIONS))
    for obs, a, rew, nxt, term, _, ep in _stream()[:3]:  # 3 steps of a still-running episode
        r = replay_add(
            r,
            jnp.asarray(obs[None]),
            jnp.asarray(a[None]),
            jnp.asarray([rew]),
            jnp.asarray([1.0 - float(term)]),
            jnp.asarray(nxt[None]),
            jnp.asarray([ep], jnp.int32),
        )
    batch = replay_sample_sequences(r, jax.random.PRNGKey(0), 4, T)
    np.testing.assert_array_equal(np.asarray(batch.mask).sum(1), [3, 3, 3, 3])


def test_imagination_starts_are_drawn_among_real_steps():
    """``imagination.num_starts`` subsamples the window steps: padded steps (weight 0) are only
    drawn when a batch has fewer real steps than starts, so padding never crowds real starts
    out (Catch's 9-step episodes in 10-step windows are half padding)."""
    agent, state = agent_and_state("mlp")
    agent = agent._replace(config=small_config(sequence_mode=True, sequence_length=T))
    batch = host_windows(batch=16)
    mask = np.asarray(batch.mask).reshape(-1)
    real = int(mask.sum())
    assert 8 < real < mask.size  # padding to skip
    observed = observe_batch(agent, state.wm_params, batch)
    for n in (real // 2, real):
        agent.config.imagination.num_starts = n
        for seed in range(8):
            _, weights, _ = start_states(
                agent, state.wm_params, batch, jax.random.PRNGKey(seed), observed
            )
            np.testing.assert_array_equal(weights, np.ones(n))
    agent.config.imagination.num_starts = real + 3  # more starts than real steps: all of them
    _, weights, _ = start_states(agent, state.wm_params, batch, jax.random.PRNGKey(0), observed)
    assert float(weights.sum()) == real
