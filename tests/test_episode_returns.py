"""Real-data critic targets from whole episodes (``config.critic.real_targets = "episode"``):
the replay's discounted returns to a stored termination, and the targets that use them."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_spec, small_config

from wm_jax.config import ConfigError, get_config, validate
from wm_jax.replay import ReplayBuffer
from wm_jax.shell import prepare_batch
from wm_jax.update import init_state, make_agent, real_value_targets

GAMMA = 0.9
# One env's episodes, in order: length and how each ends.
EPISODES = (
    (4, "terminated"),
    (3, "truncated"),
    (7, "terminated"),
    (1, "terminated"),
    (5, "running"),
)


def fill(buffer: ReplayBuffer, episodes=EPISODES, seed: int = 0) -> dict[tuple[int, int], float]:
    """Adds the episodes to a 1-env buffer (obs = [episode, step]) and returns the expected
    return of every step of a terminated episode, summed directly: Σ_k γ^k r_{t+k}."""
    rng = np.random.default_rng(seed)
    expected = {}
    for ep, (length, end) in enumerate(episodes):
        rewards = rng.normal(size=length).astype(np.float32)
        for t in range(length):
            last = t == length - 1
            obs = np.float32([[ep, t]])
            buffer.add(
                obs,
                np.float32([[1.0]]),
                rewards[t : t + 1],
                obs + np.float32([[0, 1]]),
                np.array([last and end == "terminated"]),
                np.array([last and end == "truncated"]),
            )
        if end == "terminated":
            for t in range(length):
                expected[(ep, t)] = sum(GAMMA**k * float(r) for k, r in enumerate(rewards[t:]))
    return expected


def make_buffer(capacity: int = 64, gamma: float | None = GAMMA) -> ReplayBuffer:
    return ReplayBuffer(capacity, 1, (2,), np.float32, 1, return_gamma=gamma)


def check_flat(buffer: ReplayBuffer, expected: dict, stored: set) -> None:
    """Every stored step drawn: known exactly where its episode terminated, with that return."""
    flat = buffer.sample_flat(np.random.default_rng(1), 2000)
    seen = set()
    for obs, ret, known in zip(flat.obs, flat.return_to_go, flat.return_known, strict=True):
        key = (int(obs[0]), int(obs[1]))
        seen.add(key)
        assert known == (1.0 if key in expected else 0.0), key
        if key in expected:
            np.testing.assert_allclose(ret, expected[key], rtol=1e-5, atol=1e-6)
    assert seen == stored


def test_the_replay_keeps_each_terminated_episodes_discounted_return_and_none_for_the_others():
    buffer = make_buffer()
    expected = fill(buffer)
    stored = {(ep, t) for ep, (n, _) in enumerate(EPISODES) for t in range(n)}
    check_flat(buffer, expected, stored)
    # A buffer without return_gamma adds no fields: its batches are the λ-return path's.
    plain = make_buffer(gamma=None)
    fill(plain)
    flat = plain.sample_flat(np.random.default_rng(1), 8)
    assert flat.return_to_go is None and flat.return_known is None


def test_a_ring_that_overwrites_an_episode_keeps_the_returns_of_its_stored_steps_only():
    # 12 slots: the first episode and most of the second are overwritten; the slots that now
    # hold the running episode's steps must not keep an old episode's returns.
    buffer = make_buffer(capacity=12)
    expected = fill(buffer)
    stored = [(ep, t) for ep, (n, _) in enumerate(EPISODES) for t in range(n)][-12:]
    check_flat(buffer, {k: v for k, v in expected.items() if k in stored}, set(stored))


def test_returns_are_rebuilt_from_a_checkpointed_replay_and_when_switched_on_later():
    buffer = make_buffer(capacity=12)
    fill(buffer)
    restored = make_buffer(capacity=12)
    restored.load_state_dict(buffer.state_dict())
    later = make_buffer(capacity=12, gamma=None)
    later.load_state_dict(buffer.state_dict())
    later.keep_returns(GAMMA)
    want = buffer.sample_flat(np.random.default_rng(2), 64)
    for other in (restored, later):
        got = other.sample_flat(np.random.default_rng(2), 64)
        np.testing.assert_array_equal(got.return_known, want.return_known)
        np.testing.assert_array_equal(
            got.return_to_go * got.return_known, want.return_to_go * want.return_known
        )
    with pytest.raises(ValueError, match="return_gamma"):
        make_buffer(gamma=1.5)


def test_windows_know_returns_on_their_real_steps_only():
    buffer = make_buffer()
    expected = fill(buffer)
    seq = buffer.sample_sequences(np.random.default_rng(3), 400, 5)
    padded_known = 0
    for b in range(seq.reward.shape[0]):
        for t in range(5):
            key = (int(seq.obs[b, t, 0]), int(seq.obs[b, t, 1]))
            real = seq.mask[b, t] == 1.0
            known = real and key in expected
            assert seq.return_known[b, t] == float(known)
            padded_known += int(not real)
            if known:
                np.testing.assert_allclose(seq.return_to_go[b, t], expected[key], rtol=1e-5)
    assert padded_known > 0  # padding was drawn, and none of it counted as known


def test_prepared_batches_scale_returns_like_rewards():
    buffer = make_buffer()
    fill(buffer)
    seq = buffer.sample_sequences(np.random.default_rng(4), 16, 4)
    prepared = prepare_batch(seq, jnp.zeros(2), jnp.ones(2), np.float32(0.5))
    np.testing.assert_allclose(prepared.return_to_go, seq.return_to_go * 0.5)
    np.testing.assert_array_equal(prepared.return_known, seq.return_known)


@functools.cache
def agent_and_state(sequence: bool):
    config = small_config(sequence_mode=sequence, sequence_length=5)
    agent = make_agent(config, make_spec(obs_shape=(2,), action_dim=1))
    state = init_state(agent, jax.random.PRNGKey(0))
    # The value head starts at zero; give the target critic values worth bootstrapping.
    leaves, tree = jax.tree.flatten(state.critic_target_params)
    keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
    noisy = [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return agent, state.replace(critic_target_params=jax.tree.unflatten(tree, noisy))


@pytest.mark.parametrize("sequence", [True, False], ids=["windows", "flat"])
def test_real_targets_are_the_episode_return_where_known_and_bootstrapped_elsewhere(sequence):
    agent, state = agent_and_state(sequence)
    buffer = make_buffer()
    fill(buffer)
    rng = np.random.default_rng(5)
    batch = buffer.sample_sequences(rng, 32, 5) if sequence else buffer.sample_flat(rng, 64)
    batch = jax.tree.map(jnp.asarray, batch)
    targets_fn = jax.jit(functools.partial(real_value_targets, agent))
    _, targets, weights = targets_fn(state, batch)
    _, bootstrapped, _ = targets_fn(state, batch.replace(return_to_go=None, return_known=None))
    known = np.asarray(batch.return_known) > 0
    assert known.any() and (~known & (np.asarray(batch.mask) > 0)).any()
    np.testing.assert_allclose(np.asarray(targets)[known], np.asarray(batch.return_to_go)[known])
    np.testing.assert_array_equal(np.asarray(targets)[~known], np.asarray(bootstrapped)[~known])
    # The bootstrapped targets of those steps differ: the switch changes what the critic fits.
    assert not np.allclose(np.asarray(bootstrapped)[known], np.asarray(batch.return_to_go)[known])
    np.testing.assert_array_equal(weights, batch.mask)


def test_a_misspelt_real_targets_value_is_refused_by_name():
    for loop in ("host", "device"):
        c = get_config()
        c.critic.real_targets, c.loop = "episodes", loop
        with pytest.raises(ConfigError, match="critic.real_targets") as info:
            validate(c)
        assert "one of" in str(info.value)


# --- the device loop's ring (wm_jax.replay_device) ------------------------------------------
# Two envs with different episode structures, written one vector step at a time as the device
# loop does; obs = [100·env + episode, step] and every reward is distinct, so every sampled
# value traces back to its step.
DEVICE_EPISODES = (
    EPISODES,
    ((2, "terminated"), (6, "truncated"), (5, "terminated"), (7, "running")),
)


def fill_device(capacity: int):
    """The device ring after the vector steps both envs have (the shorter env's count), the
    expected return of every stored step whose episode terminated within them, the stored steps
    and each step by its reward."""
    from wm_jax.replay_device import replay_add, replay_init

    rng = np.random.default_rng(5)
    steps, returns = [], {}
    for env, episodes in enumerate(DEVICE_EPISODES):
        steps.append([])
        for ep, (length, end) in enumerate(episodes):
            rewards = rng.normal(size=length).astype(np.float32)
            for t in range(length):
                steps[env].append(
                    (100 * env + ep, t, rewards[t], t == length - 1 and end == "terminated")
                )
                returns[(100 * env + ep, t)] = sum(
                    GAMMA**k * float(r) for k, r in enumerate(rewards[t:])
                )
    n = min(len(s) for s in steps)
    r = replay_init(capacity, 2, make_spec(obs_shape=(2,), action_dim=1), return_gamma=GAMMA)
    add = jax.jit(replay_add)
    for i in range(n):
        rows = [steps[env][i] for env in (0, 1)]
        obs = jnp.asarray([[ep, t] for ep, t, _, _ in rows], jnp.float32)
        r = add(
            r,
            obs,
            jnp.ones((2, 1)),
            jnp.asarray([x[2] for x in rows]),
            jnp.asarray([0.0 if x[3] else 1.0 for x in rows]),
            obs + jnp.asarray([0.0, 1.0]),
            jnp.asarray([x[0] for x in rows], jnp.int32),
        )
    stored = {(ep, t) for env in (0, 1) for ep, t, _, _ in steps[env][max(n - capacity, 0) : n]}
    ended = {ep for env in (0, 1) for ep, _, _, end in steps[env][:n] if end}
    expected = {k: v for k, v in returns.items() if k in stored and k[0] in ended}
    by_reward = {float(x[2]): x[:2] for env in (0, 1) for x in steps[env]}
    assert len(by_reward) == sum(map(len, steps))
    return r, expected, stored, by_reward


@pytest.mark.parametrize("capacity", [32, 9], ids=["whole", "ring-wrapped"])
def test_the_device_ring_keeps_each_terminated_episodes_return_as_the_host_replay(capacity):
    from wm_jax.replay_device import replay_init, replay_sample_flat, replay_sample_sequences

    r, expected, stored, by_reward = fill_device(capacity)
    flat = jax.device_get(replay_sample_flat(r, jax.random.PRNGKey(0), 3000))
    seen = set()
    for obs, ret, known in zip(flat.obs, flat.return_to_go, flat.return_known, strict=True):
        key = (int(obs[0]), int(obs[1]))
        seen.add(key)
        assert known == float(key in expected), key
        if known:
            np.testing.assert_allclose(ret, expected[key], rtol=1e-5, atol=1e-6)
    assert seen == stored and expected and set(expected) != stored
    # Windows: known only on their real (mask = 1) steps, with those steps' returns; a masked
    # step holds the next episode's data, whatever that episode's fate.
    seq = jax.device_get(replay_sample_sequences(r, jax.random.PRNGKey(1), 500, 4))
    masked = 0
    for b in range(seq.reward.shape[0]):
        for t in range(4):
            key = by_reward[float(seq.reward[b, t])]
            known = seq.mask[b, t] == 1.0 and key in expected
            masked += int(seq.mask[b, t] == 0.0 and key in expected)
            assert seq.return_known[b, t] == float(known), (b, t, key)
            if known:
                np.testing.assert_allclose(seq.return_to_go[b, t], expected[key], rtol=1e-5)
    assert masked > 0  # masked steps of terminated episodes were drawn, and none counted
    plain = replay_init(4, 2, make_spec(obs_shape=(2,), action_dim=1))
    assert plain.ret is None
    assert replay_sample_flat(plain, jax.random.PRNGKey(0), 2).return_known is None


@pytest.mark.slow
def test_the_device_loop_keeps_episode_returns_and_resumes_them_exactly(tmp_path):
    """A device-loop run with episode targets, interrupted and resumed, ends with the straight
    run's checkpoint bit for bit, and its ring's returns are the direct sums over its own
    stored rewards, terminations and episode ids."""
    pytest.importorskip("gymnax")
    from conftest import checkpoint_arrays

    from wm_jax.device_loop import train_device

    def config():
        c = small_config(
            env_id="gymnax:CartPole-v1",
            loop="device",
            total_env_steps=192,
            prefill_steps=64,
            eval_every=64,
            eval_episodes=1,
            log_every=64,
            checkpoint_every=64,
            report=False,
            **{"schedule.warmup_steps": 64, "schedule.transition_steps": 128},
            **{"diagnostics.open_loop_every": 0, "critic.real_targets": "episode"},
        )
        c.imagination.gamma = GAMMA
        return c

    train_device(config(), str(tmp_path / "resumed"), stop_at=128)
    train_device(config(), str(tmp_path / "resumed"))
    train_device(config(), str(tmp_path / "straight"))
    a, b = checkpoint_arrays(tmp_path / "resumed"), checkpoint_arrays(tmp_path / "straight")
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # The checkpoint holds the loop state's leaves by number: name them from a fresh state.
    from wm_jax.device_segment import DeviceLoop

    template = DeviceLoop(config()).init(0).replace(train=None)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(template)]
    ring = {
        path.rsplit(".", 1)[-1]: a[f"['extras']['device_loop']['{i:04d}']"]
        for i, path in enumerate(paths)
        if path.startswith(".replay.")
    }
    reward, cont, episode, ret, known = (
        ring[k] for k in ("reward", "cont", "episode", "ret", "known")
    )
    head, size = int(ring["head"]), int(ring["size"])
    capacity = reward.shape[0]
    order = [(head - size + i) % capacity for i in range(size)]  # oldest first
    want_known = np.zeros_like(known)
    for env in range(reward.shape[1]):
        g, ep = None, None
        for slot in reversed(order):
            if cont[slot, env] == 0:
                g, ep = 0.0, episode[slot, env]
            elif episode[slot, env] != ep:
                g = None
            if g is not None:
                g = reward[slot, env] + GAMMA * g
                want_known[slot, env] = True
                np.testing.assert_allclose(ret[slot, env], g, rtol=1e-5)
    np.testing.assert_array_equal(known, want_known)
    assert want_known.any() and not want_known.all()
