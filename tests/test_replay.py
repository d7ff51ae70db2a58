"""Tests for wm_jax.replay: windows stay inside one env and episode, ring wrap, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from wm_jax.replay import ReplayBuffer


class Stream:
    """A synthetic multi-env stream where every value encodes (env, episode, step).

    obs = [env, episode, step], action = [env, step], reward = 10000 env + 100 episode + step.
    Episode lengths are random in [1, max_len]; even episodes terminate, odd ones truncate.
    With ``p_invalid > 0`` some envs sit out a call: their rows are garbage (-1) with
    valid=False and their stream does not advance.
    """

    def __init__(self, num_envs: int, seed: int, max_len: int = 6, p_invalid: float = 0.0):
        self.n, self.max_len, self.p_invalid = num_envs, max_len, p_invalid
        self.rng = np.random.default_rng(seed)
        self.episode = np.zeros(num_envs, dtype=np.int64)
        self.t = np.zeros(num_envs, dtype=np.int64)
        self.length = self.rng.integers(1, max_len + 1, size=num_envs)
        # Per env, in order: (episode, step, terminated, truncated) of each real transition.
        self.history: list[list[tuple[int, int, bool, bool]]] = [[] for _ in range(num_envs)]

    def step(self):
        valid = self.rng.random(self.n) >= self.p_invalid
        env = np.arange(self.n)
        obs = np.stack([env, self.episode, self.t], -1).astype(np.float32)
        next_obs = obs.copy()
        next_obs[:, 2] += 1
        action = np.stack([env, self.t], -1).astype(np.float32)
        reward = (10000 * env + 100 * self.episode + self.t).astype(np.float32)
        done = self.t + 1 == self.length
        term = done & (self.episode % 2 == 0)
        trunc = done & (self.episode % 2 == 1)
        for arr in (obs, next_obs, action, reward):
            arr[~valid] = -1
        for i in np.flatnonzero(valid):
            self.history[i].append((int(self.episode[i]), int(self.t[i]), term[i], trunc[i]))
            self.t[i] += 1
            if done[i]:
                self.episode[i] += 1
                self.t[i] = 0
                self.length[i] = self.rng.integers(1, self.max_len + 1)
        return obs, action, reward, next_obs, term, trunc, valid

    def fill(self, buffer: ReplayBuffer, calls: int) -> None:
        for _ in range(calls):
            buffer.add(*self.step())


def check_sequences(seq, stream: Stream, slots_per_env: int) -> dict[str, int]:
    """Asserts every window is consecutive stored steps of one env and one episode."""
    b, t = seq.reward.shape
    assert seq.obs.shape == (b, t + 1, 3) and seq.action.shape == (b, t, 2)
    assert not np.isnan(seq.obs).any() and not np.isnan(seq.reward).any()
    stats = {"full": 0, "padded": 0}
    for i in range(b):
        mask = seq.mask[i]
        n_real = int(mask.sum())
        assert n_real >= 1
        np.testing.assert_array_equal(mask, np.arange(t) < n_real)  # real prefix, then padding
        env, episode, s0 = (int(v) for v in seq.obs[i, 0])
        stored = stream.history[env][-slots_per_env:]
        position = {(ep, s): p for p, (ep, s, _, _) in enumerate(stored)}
        p0 = position[(episode, s0)]  # the start is stored data, not overwritten data
        for k in range(n_real):
            ep, s, term, trunc = stored[p0 + k]  # consecutive stored transitions...
            assert (ep, s) == (episode, s0 + k)  # ...of one episode
            np.testing.assert_array_equal(seq.obs[i, k], [env, episode, s0 + k])
            np.testing.assert_array_equal(seq.action[i, k], [env, s0 + k])
            assert seq.reward[i, k] == 10000 * env + 100 * episode + s0 + k
            assert seq.cont[i, k] == (0.0 if term else 1.0)
            if k < n_real - 1:
                assert not (term or trunc), "window continued past an episode end"
        # obs after the last real step is its true next obs; padding repeats final values.
        assert (seq.obs[i, n_real:] == [env, episode, s0 + n_real]).all()
        for field in (seq.action, seq.reward, seq.cont):
            assert (field[i, n_real:] == field[i, n_real - 1]).all()
        if n_real < t:
            _, _, term, trunc = stored[p0 + n_real - 1]
            assert term or trunc or p0 + n_real == len(stored), "padded without a reason"
            stats["padded"] += 1
        else:
            stats["full"] += 1
    return stats


def make_buffer(capacity: int = 300, num_envs: int = 3, **kwargs) -> ReplayBuffer:
    return ReplayBuffer(
        capacity, num_envs, obs_shape=(3,), obs_dtype=np.float32, action_dim=2, **kwargs
    )


def test_sequences_never_mix_episodes_or_envs():
    buffer = make_buffer(capacity=300, num_envs=3)
    stream = Stream(3, seed=0, max_len=9)
    stream.fill(buffer, 60)
    assert len(buffer) == 180
    rng = np.random.default_rng(1)
    seq = buffer.sample_sequences(rng, batch_size=512, length=5)
    stats = check_sequences(seq, stream, buffer.slots_per_env)
    assert stats["full"] > 0 and stats["padded"] > 0
    assert set(seq.obs[:, 0, 0].astype(int)) == {0, 1, 2}


def test_short_episode_is_padded_with_mask_zero_and_true_final_obs():
    buffer = make_buffer(capacity=20, num_envs=1)
    # Episode 0 has 2 steps (terminated), episode 1 has 5 steps and is still running.
    steps = [(0, 0, False), (0, 1, True)] + [(1, s, False) for s in range(5)]
    for ep, s, term in steps:
        obs = np.float32([[0, ep, s]])
        buffer.add(
            obs,
            np.float32([[0, s]]),
            np.float32([100 * ep + s]),
            obs + np.float32([0, 0, 1]),
            np.array([term]),
            np.array([False]),
        )
    seq = buffer.sample_sequences(np.random.default_rng(0), batch_size=256, length=4)
    starts = seq.obs[:, 0, 1:]
    first = np.flatnonzero((starts == [0, 0]).all(-1))[0]
    np.testing.assert_array_equal(seq.mask[first], [1, 1, 0, 0])
    np.testing.assert_array_equal(seq.obs[first, :, 2], [0, 1, 2, 2, 2])  # 2 = final obs, no reset
    np.testing.assert_array_equal(seq.cont[first], [1, 0, 0, 0])
    np.testing.assert_array_equal(seq.reward[first], [0, 1, 1, 1])
    # A start two steps before the newest data is padded too: no window runs past it.
    late = np.flatnonzero((starts == [1, 3]).all(-1))[0]
    np.testing.assert_array_equal(seq.mask[late], [1, 1, 0, 0])
    np.testing.assert_array_equal(seq.obs[late, :, 2], [3, 4, 5, 5, 5])


def test_ring_wrap_keeps_newest_data_and_windows_skip_the_overwrite_point():
    buffer = make_buffer(capacity=25, num_envs=3)  # 8 slots per env
    assert buffer.capacity == 24 and buffer.slots_per_env == 8
    stream = Stream(3, seed=3, max_len=12)  # episodes longer than the ring
    stream.fill(buffer, 53)  # wraps several times, write pointer mid-ring
    assert len(buffer) == 24
    rng = np.random.default_rng(0)
    flat = buffer.sample_flat(rng, 2000)
    for env in range(3):
        newest = {(ep, s) for ep, s, _, _ in stream.history[env][-8:]}
        rows = flat.obs[:, 0] == env
        assert {(int(ep), int(s)) for _, ep, s in flat.obs[rows]} == newest
    check_sequences(buffer.sample_sequences(rng, 512, 6), stream, buffer.slots_per_env)


def test_flat_samples_are_consistent_and_uniform_over_envs_with_skipped_invalid_steps():
    buffer = make_buffer(capacity=3000, num_envs=2)
    stream = Stream(2, seed=5, max_len=5, p_invalid=0.0)
    for _ in range(400):
        obs, action, reward, next_obs, term, trunc, valid = stream.step()
        valid[1] = valid[1] and stream.rng.random() < 0.25  # env 1 keeps ~1/4 of its steps
        if not valid[1]:
            stream.history[1].pop()  # the stream advanced, but the buffer must not store it
            obs[1] = -1
        buffer.add(obs, action, reward, next_obs, term, trunc, valid=valid)
    counts = [len(h) for h in stream.history]
    assert len(buffer) == sum(counts)
    flat = buffer.sample_flat(np.random.default_rng(0), 20000)
    assert flat.obs.dtype == np.float32 and flat.mask.dtype == np.float32
    np.testing.assert_array_equal(flat.mask, 1.0)
    assert (flat.obs >= 0).all(), "an invalid row was stored"
    env, ep, s = flat.obs.T
    np.testing.assert_array_equal(flat.next_obs, np.stack([env, ep, s + 1], -1))
    np.testing.assert_array_equal(flat.action, np.stack([env, s], -1))
    np.testing.assert_array_equal(flat.reward, 10000 * env + 100 * ep + s)
    terminated = {(e, ep_, s_) for e, h in enumerate(stream.history) for ep_, s_, tm, _ in h if tm}
    expected_cont = [0.0 if (int(a), int(b), int(c)) in terminated else 1.0 for a, b, c in flat.obs]
    np.testing.assert_array_equal(flat.cont, expected_cont)
    assert abs((env == 0).mean() - counts[0] / sum(counts)) < 0.02


def test_invalid_steps_are_skipped_per_env_in_sequences():
    buffer = make_buffer(capacity=120, num_envs=3)
    stream = Stream(3, seed=9, max_len=7, p_invalid=0.3)
    stream.fill(buffer, 70)
    assert len(buffer) == sum(min(len(h), 40) for h in stream.history)
    check_sequences(buffer.sample_sequences(np.random.default_rng(2), 256, 4), stream, 40)


def test_state_dict_round_trip_gives_identical_future_samples():
    buffer = make_buffer(capacity=30, num_envs=3)
    stream = Stream(3, seed=11, max_len=6, p_invalid=0.2)
    stream.fill(buffer, 17)  # partly wrapped, uneven counts
    state = buffer.state_dict()
    assert all(isinstance(v, (np.ndarray, int)) for v in state.values())
    assert all(v.dtype != object for v in state.values() if isinstance(v, np.ndarray))
    restored = make_buffer(capacity=30, num_envs=3)
    restored.load_state_dict(state)
    assert len(restored) == len(buffer)
    for step in range(3):
        a = buffer.sample_sequences(np.random.default_rng(step), 64, 4)
        b = restored.sample_sequences(np.random.default_rng(step), 64, 4)
        for field in ("obs", "action", "reward", "cont", "mask"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        fa = buffer.sample_flat(np.random.default_rng(step), 64)
        fb = restored.sample_flat(np.random.default_rng(step), 64)
        for field in ("obs", "action", "reward", "next_obs", "cont"):
            np.testing.assert_array_equal(getattr(fa, field), getattr(fb, field))
        batch = stream.step()  # the same future writes land in the same slots
        buffer.add(*batch)
        restored.add(*batch)
    for key, value in buffer.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[key], value)
    # The saved state is a copy: writing to the buffer does not change it.
    assert not np.array_equal(state["write_pos"], buffer.state_dict()["write_pos"])


def test_load_state_dict_rejects_mismatched_layout_with_clear_error():
    state = make_buffer(capacity=30, num_envs=3).state_dict()
    with pytest.raises(ValueError, match=r"num_envs, slots_per_env, action_dim"):
        make_buffer(capacity=60, num_envs=3).load_state_dict(state)
    other_obs = ReplayBuffer(30, 3, obs_shape=(4,), obs_dtype=np.float32, action_dim=2)
    with pytest.raises(ValueError, match=r"'obs' has shape \(3, 10, 3\)"):
        other_obs.load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys"):
        make_buffer(capacity=30, num_envs=3).load_state_dict({"obs": state["obs"]})


def test_uint8_observations_stay_uint8():
    buffer = ReplayBuffer(40, 2, obs_shape=(4, 4, 1), obs_dtype=np.uint8, action_dim=3)
    rng = np.random.default_rng(0)
    for step in range(10):
        obs = np.full((2, 4, 4, 1), step, np.uint8)
        buffer.add(
            obs,
            np.zeros((2, 3), np.float32),
            np.zeros(2, np.float32),
            obs + 1,
            np.zeros(2, bool),
            np.zeros(2, bool),
        )
    assert buffer.state_dict()["obs"].dtype == np.uint8
    assert buffer.sample_flat(rng, 8).obs.dtype == np.uint8
    seq = buffer.sample_sequences(rng, 8, 3)
    assert seq.obs.dtype == np.uint8 and seq.obs.shape == (8, 4, 4, 4, 1)
    with pytest.raises(ValueError, match=r"float32.*uint8"):
        buffer.add(
            np.zeros((2, 4, 4, 1), np.float32),
            np.zeros((2, 3), np.float32),
            np.zeros(2, np.float32),
            np.zeros((2, 4, 4, 1), np.uint8),
            np.zeros(2, bool),
            np.zeros(2, bool),
        )


def test_sampling_too_early_raises_clear_errors():
    buffer = make_buffer(capacity=30, num_envs=3)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"holds 0 transitions.*at least 1.*warmup"):
        buffer.sample_flat(rng, 4)
    Stream(3, seed=0).fill(buffer, 1)
    with pytest.raises(ValueError, match=r"holds 3 transitions.*at least 5.*prefill"):
        buffer.sample_sequences(rng, 4, 5)
    with pytest.raises(ValueError, match="exceeds the 10 transitions each env"):
        buffer.sample_sequences(rng, 4, 11)
    with pytest.raises(ValueError, match=r"obs must have shape \(3, 3\)"):
        buffer.add(
            np.zeros((2, 3), np.float32),
            np.zeros((3, 2), np.float32),
            np.zeros(3, np.float32),
            np.zeros((3, 3), np.float32),
            np.zeros(3, bool),
            np.zeros(3, bool),
        )
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(2, 3, obs_shape=(3,), obs_dtype=np.float32, action_dim=2)


def test_a_terminal_share_of_windows_holds_a_stored_termination_at_every_place():
    buffer = make_buffer(capacity=150, num_envs=3)  # 50 slots per env: the ring wraps
    stream = Stream(3, seed=2, max_len=12)
    stream.fill(buffer, 80)
    seq = buffer.sample_sequences(
        np.random.default_rng(3), batch_size=400, length=5, terminal_fraction=0.25
    )
    check_sequences(seq, stream, buffer.slots_per_env)  # still one episode's stored steps
    terminal = ((seq.cont == 0) & (seq.mask == 1)).any(axis=1)
    assert terminal[:100].all()
    # The termination sits anywhere in the window, not only at its start or end.
    assert set(np.argmax(seq.cont[:100] == 0, axis=1)) == set(range(5))
    # The other windows are uniform: terminations only at the stream's own rate.
    assert terminal[100:].mean() < 0.7


def test_without_stored_terminations_a_terminal_share_draws_what_uniform_sampling_draws():
    buffer = make_buffer(capacity=40, num_envs=1)
    for s in range(30):  # episodes of 6 steps that all end by truncation
        obs = np.float32([[0, s // 6, s % 6]])
        buffer.add(
            obs,
            np.float32([[0, s]]),
            np.float32([s]),
            obs + 1,
            np.array([False]),
            np.array([s % 6 == 5]),
        )
    share = buffer.sample_sequences(np.random.default_rng(5), 64, 4, terminal_fraction=0.5)
    uniform = buffer.sample_sequences(np.random.default_rng(5), 64, 4)
    for field in ("obs", "action", "reward", "cont", "mask"):
        np.testing.assert_array_equal(getattr(share, field), getattr(uniform, field))


def test_a_terminal_share_of_flat_samples_is_stored_terminations():
    buffer = make_buffer(capacity=300, num_envs=3)
    stream = Stream(3, seed=4, max_len=9)
    stream.fill(buffer, 60)
    flat = buffer.sample_flat(np.random.default_rng(6), 200, terminal_fraction=0.5)
    assert (flat.cont[:100] == 0).all() and (flat.cont[100:] == 1).any()
    np.testing.assert_array_equal(flat.next_obs[:, :2], flat.obs[:, :2])  # one env, one episode
    np.testing.assert_array_equal(flat.next_obs[:, 2], flat.obs[:, 2] + 1)


def test_a_terminal_share_is_refused_out_of_range_or_in_the_device_loop():
    from wm_jax.config import ConfigError, get_config, validate

    for value, loop, words in ((1.0, "host", "[0, 1)"), (0.25, "device", "loop=device")):
        c = get_config()
        c.replay_terminal_fraction, c.loop = value, loop
        with pytest.raises(ConfigError, match="replay_terminal_fraction") as info:
            validate(c)
        assert words in str(info.value)
