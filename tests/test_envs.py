"""Tests for wm_jax.envs: exact transitions across resets, exact resume from a state dict, space
validation, conversions."""

from __future__ import annotations

import os
import subprocess
import sys

import gymnasium
import jax
import numpy as np
import pytest
from gymnasium import spaces

from wm_jax import env_make, vector_env
from wm_jax.env_make import async_context
from wm_jax.envs import (
    EnvSpec,
    UnsupportedSpaceError,
    VectorEnv,
    episode_seed,
    from_env_action,
    make_env,
    make_env_spec,
    spec_from_spaces,
    to_env_action,
)

COUNTER_ID = "WmJaxTest/Counter-v0"
DICT_OBS_ID = "WmJaxTest/DictObs-v0"
INT_OBS_ID = "WmJaxTest/IntObs-v0"
TEXT_OBS_ID = "WmJaxTest/TextObs-v0"
MISSING_DEPENDENCY_ID = "WmJaxTest/MissingDependency-v0"
MULTI_ACTION_ID = "WmJaxTest/MultiAction-v0"
ENDLESS_ID = "WmJaxTest/Endless-v0"
TIME_LIMIT = 4
TERMINATE_AT = 3
ID_MOD = 2**16  # episode ids stay exact in float32


class CounterEnv(gymnasium.Env):
    """An env whose every transition is known in advance.

    obs = [episode id, step in episode]; the id is the reset seed mod 2**16 (VectorEnv seeds every
    episode), +1 on an unseeded reset.  action in Discrete(2, start=1); reward = step after the
    action + 10 * (action - 1).  Episodes with an even id terminate at step 3; the others are
    truncated at step 4 by the registered TimeLimit, so envs of one vector env run out of step.
    """

    observation_space = spaces.Box(0.0, np.inf, shape=(2,), dtype=np.float32)
    action_space = spaces.Discrete(2, start=1)

    def __init__(self) -> None:
        self._id = -1
        self._t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self._id, self._t], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._id = seed % ID_MOD if seed is not None else self._id + 1
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        assert action in (1, 2), action
        self._t += 1
        reward = float(self._t + 10 * (int(action) - 1))
        terminated = self._id % 2 == 0 and self._t == TERMINATE_AT
        return self._obs(), reward, terminated, False, {}


class DictObsEnv(gymnasium.Env):
    observation_space = spaces.Dict({"a": spaces.Box(-1.0, 1.0, (2,), np.float32)})
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"a": np.zeros(2, np.float32)}, {}

    def step(self, action):
        return {"a": np.zeros(2, np.float32)}, 0.0, False, False, {}


gymnasium.register(COUNTER_ID, entry_point=CounterEnv, max_episode_steps=TIME_LIMIT)


class IntObsEnv(DictObsEnv):
    observation_space = spaces.Box(0, 10, (3,), np.int64)

    def reset(self, *, seed=None, options=None):
        gymnasium.Env.reset(self, seed=seed)
        return np.array([1, 2, 3], np.int64), {}

    def step(self, action):
        return np.array([1, 2, 3], np.int64), 0.0, False, False, {}


class TextObsEnv(DictObsEnv):
    observation_space = spaces.Text(8)


class MultiActionEnv(DictObsEnv):
    """Observes the last action it was given (as floats); its action space is a kwarg."""

    observation_space = spaces.Box(-10.0, 10.0, (2,), np.float32)

    def __init__(self, action_space=None):
        self.action_space = action_space or spaces.MultiDiscrete([3, 2], start=[1, -1])
        self.last = np.zeros(2, np.float32)

    def reset(self, *, seed=None, options=None):
        gymnasium.Env.reset(self, seed=seed)
        return self.last, {}

    def step(self, action):
        assert self.action_space.contains(action), action
        self.last = np.zeros(2, np.float32)
        self.last[: np.size(action)] = np.ravel(action)
        return self.last, 0.0, False, False, {}


class EndlessEnv(DictObsEnv):
    """Reward 1 every step, never ends, registered without a time limit."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        gymnasium.Env.reset(self, seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 1.0, False, False, {}


def missing_dependency_env(**kwargs):
    raise gymnasium.error.DependencyNotInstalled(
        'no_such_physics is not installed, run `pip install "no_such_physics"`'
    )


gymnasium.register(DICT_OBS_ID, entry_point=DictObsEnv)
gymnasium.register(INT_OBS_ID, entry_point=IntObsEnv)
gymnasium.register(TEXT_OBS_ID, entry_point=TextObsEnv, disable_env_checker=True)
gymnasium.register(MISSING_DEPENDENCY_ID, entry_point=missing_dependency_env)
gymnasium.register(ENDLESS_ID, entry_point=EndlessEnv)
gymnasium.register(MULTI_ACTION_ID, entry_point=MultiActionEnv, max_episode_steps=50)


class CounterReference:
    """A model of what VectorEnv must report for CounterEnv, one env at a time."""

    def __init__(self, seed: int, num_envs: int) -> None:
        self.seed = seed
        self.episode = [0] * num_envs
        self.t = [0] * num_envs
        self.ret = [0.0] * num_envs

    def id(self, i: int) -> int:
        # Episode e of env i is reset with episode_seed(seed, i, e), documented as:
        seed = int(np.random.SeedSequence([self.seed, i, self.episode[i]]).generate_state(1)[0])
        assert seed == episode_seed(self.seed, i, self.episode[i])
        return seed % ID_MOD

    def obs(self) -> np.ndarray:
        return np.array([[self.id(i), t] for i, t in enumerate(self.t)], dtype=np.float32)

    def step(self, env_actions: np.ndarray):
        rows, returns, lengths = [], [], []
        for i, a in enumerate(env_actions):
            obs = [self.id(i), self.t[i]]
            t = self.t[i] + 1
            reward = t + 10 * (int(a) - 1)
            term = self.id(i) % 2 == 0 and t == TERMINATE_AT
            trunc = not term and t == TIME_LIMIT
            rows.append((obs, reward, [self.id(i), t], term, trunc))
            self.ret[i] += reward
            self.t[i] = t
            if term or trunc:
                returns.append(self.ret[i])
                lengths.append(t)
                self.episode[i] += 1
                self.t[i] = 0
                self.ret[i] = 0.0
        return rows, returns, lengths


def _check_counter_run(
    mode: str, num_envs: int = 3, steps: int = 25, seed: int = 4, resume_at: int | None = None
) -> None:
    """Checks every transition against the reference; at ``resume_at`` the run continues in a new
    VectorEnv restored from the old one's state dict."""
    rng = np.random.default_rng(0)
    ref = CounterReference(seed, num_envs)
    env = VectorEnv(COUNTER_ID, num_envs, seed=seed, mode=mode)
    try:
        assert env.spec.discrete and env.spec.action_dim == 2 and env.spec.obs_shape == (2,)
        np.testing.assert_array_equal(env.reset(), ref.obs())
        seen_term = seen_trunc = 0
        for k in range(steps):
            if k == resume_at:
                state = env.state_dict()
                assert set(state["action_lengths"].tolist()) != {0}  # mid-episode somewhere
                env.close()
                env = VectorEnv(COUNTER_ID, num_envs, seed=seed, mode=mode)
                np.testing.assert_array_equal(env.load_state_dict(state), ref.obs())
            env_actions = rng.integers(1, 3, size=num_envs)
            actions = np.eye(2, dtype=np.float32)[env_actions - 1]
            out = env.step(actions)
            rows, returns, lengths = ref.step(env_actions)
            tr = out.transition
            np.testing.assert_array_equal(tr.obs, [r[0] for r in rows])
            np.testing.assert_array_equal(tr.reward, [r[1] for r in rows])
            np.testing.assert_array_equal(tr.next_obs, [r[2] for r in rows])
            np.testing.assert_array_equal(tr.terminated, [r[3] for r in rows])
            np.testing.assert_array_equal(tr.truncated, [r[4] for r in rows])
            np.testing.assert_array_equal(tr.action, actions)
            assert tr.action.dtype == np.float32 and tr.reward.dtype == np.float32
            assert tr.valid.all()
            # No transition crosses an episode: same episode, step advanced by exactly one.
            np.testing.assert_array_equal(tr.next_obs[:, 0], tr.obs[:, 0])
            np.testing.assert_array_equal(tr.next_obs[:, 1], tr.obs[:, 1] + 1)
            np.testing.assert_array_equal(out.obs, ref.obs())
            assert out.episode_returns == returns
            assert out.episode_lengths == lengths
            seen_term += int(tr.terminated.sum())
            seen_trunc += int(tr.truncated.sum())
        assert seen_term > 0 and seen_trunc > 0
    finally:
        env.close()


def test_sync_vector_env_reports_every_counter_transition_exactly_across_resets():
    _check_counter_run("sync")


def test_async_vector_env_reports_the_same_transitions_as_sync():
    _check_counter_run("async", num_envs=2, steps=12)


@pytest.mark.parametrize(("mode", "num_envs"), [("sync", 3), ("async", 2)])
def test_counter_run_resumed_from_state_dict_continues_exactly(mode, num_envs):
    _check_counter_run(mode, num_envs=num_envs, steps=20, resume_at=10)


def test_reset_without_seed_starts_next_episode_and_with_seed_restarts_at_episode_zero():
    with VectorEnv(COUNTER_ID, 2, seed=3) as env:
        ids = [[episode_seed(s, i, e) % ID_MOD for i in range(2)] for s, e in [(3, 0), (3, 1)]]
        np.testing.assert_array_equal(env.reset()[:, 0], ids[0])
        env.step(np.eye(2, dtype=np.float32)[[0, 1]])
        np.testing.assert_array_equal(env.reset()[:, 0], ids[1])
        np.testing.assert_array_equal(env.reset(seed=3)[:, 0], ids[0])
        assert env.seed == 3
        np.testing.assert_array_equal(env.state_dict()["episode"], [0, 0])


def test_episode_seed_is_a_deterministic_32_bit_function_of_seed_env_and_episode():
    seeds = {episode_seed(5, i, e) for i in range(4) for e in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**32 for s in seeds)
    assert episode_seed(5, 1, 2) == episode_seed(5, 1, 2) != episode_seed(6, 1, 2)
    with pytest.raises(ValueError, match=">= 0"):
        episode_seed(-1, 0, 0)


def _random_actions(spec: EnvSpec, steps: int, num_envs: int) -> np.ndarray:
    rng = np.random.default_rng(123)
    if spec.discrete:
        idx = rng.integers(0, spec.action_dim, (steps, num_envs))
        return np.eye(spec.action_dim, dtype=np.float32)[idx]
    return rng.uniform(-1.0, 1.0, (steps, num_envs, spec.action_dim)).astype(np.float32)


@pytest.mark.parametrize(
    ("env_id", "env_kwargs"),
    [("CartPole-v1", {}), ("Pendulum-v1", {"max_episode_steps": 50})],
)
def test_resume_from_state_dict_gives_bit_identical_trajectories(env_id, env_kwargs):
    steps, cut, seed = 150, 70, 11
    with VectorEnv(env_id, 3, seed=seed, env_kwargs=env_kwargs) as env:
        actions = _random_actions(env.spec, steps, 3)
        obs = [env.reset()]
        outs = []
        for k in range(steps):
            if k == cut:
                state = env.state_dict()
            outs.append(env.step(actions[k]))
            obs.append(outs[-1].obs)
    # Mid-episode for every env (Pendulum: 20 steps into a 50-step TimeLimit, so the restored
    # TimeLimit must truncate 30 steps later); CartPole's episodes are of different lengths.
    assert np.all(state["action_lengths"] > 0) and np.any(state["episode"] > 0)
    finished = sum(len(o.episode_lengths) for o in outs[cut:])
    assert finished >= 3

    with VectorEnv(env_id, 3, seed=seed, env_kwargs=env_kwargs) as resumed:
        np.testing.assert_array_equal(resumed.load_state_dict(state), obs[cut])
        for k in range(cut, steps):
            out, want = resumed.step(actions[k]), outs[k]
            for field in ("obs", "next_obs", "reward", "terminated", "truncated"):
                got, expected = getattr(out.transition, field), getattr(want.transition, field)
                assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes(), field
            assert out.obs.tobytes() == want.obs.tobytes()
            assert out.episode_returns == want.episode_returns
            assert out.episode_lengths == want.episode_lengths
        # The state itself round-trips: saving again now matches the uninterrupted run's end.
        end = resumed.state_dict()
    np.testing.assert_array_equal(end["obs"], obs[-1])


def test_state_dict_holds_only_numpy_arrays_and_ints():
    with VectorEnv("Pendulum-v1", 2, seed=0) as env:
        env.reset()
        state = env.state_dict()
        assert state["actions"].shape == (2, 1, 1)  # padded to at least one step
        for _ in range(3):
            env.step(np.float32([[0.5], [-0.5]]))
        state = env.state_dict()
    assert set(state) == {
        "seed",
        "num_envs",
        "episode",
        "episode_return",
        "episode_length",
        "actions",
        "action_lengths",
        "obs",
    }
    for key, value in state.items():
        assert type(value) is int or type(value) is np.ndarray, key
        if isinstance(value, np.ndarray):
            assert value.dtype != object, key
    assert state["actions"].shape == (2, 3, 1) and state["actions"].dtype == np.float32
    np.testing.assert_allclose(state["actions"][:, :, 0], [[1.0] * 3, [-1.0] * 3])
    np.testing.assert_array_equal(state["action_lengths"], [3, 3])


def test_load_state_dict_rejects_a_state_that_does_not_fit():
    with VectorEnv("CartPole-v1", 2, seed=0) as env:
        env.reset()
        env.step(np.eye(2, dtype=np.float32)[[0, 1]])
        state = env.state_dict()
    with VectorEnv("CartPole-v1", 3, seed=0) as env:
        with pytest.raises(ValueError, match=r"num_envs=2.*num_envs=3"):
            env.load_state_dict(state)
    with VectorEnv("CartPole-v1", 2, seed=1) as env:
        with pytest.raises(ValueError, match=r"seed=0.*seed=1"):
            env.load_state_dict(state)
    with VectorEnv("Pendulum-v1", 2, seed=0) as env:
        with pytest.raises(ValueError, match="'actions'"):
            env.load_state_dict(state)
    with VectorEnv("CartPole-v1", 2, seed=0) as env:
        with pytest.raises(ValueError, match="missing keys"):
            env.load_state_dict({k: v for k, v in state.items() if k != "obs"})
        bad = dict(state, action_lengths=state["action_lengths"] + 5)
        with pytest.raises(ValueError, match="inconsistent counters"):
            env.load_state_dict(bad)
        # A replay that does not reproduce the saved state is an error, not a silent divergence.
        bad = dict(state, episode_return=state["episode_return"] + 1.0)
        with pytest.raises(RuntimeError, match="not deterministic"):
            env.load_state_dict(bad)
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.eye(2, dtype=np.float32)[[0, 1]])
        np.testing.assert_array_equal(env.load_state_dict(state), state["obs"])


def test_same_seed_gives_same_trajectory_and_other_seed_differs():
    def rollout(seed: int) -> np.ndarray:
        with VectorEnv("CartPole-v1", 2, seed=seed) as env:
            obs = [env.reset()]
            for k in range(30):
                obs.append(env.step(np.eye(2, dtype=np.float32)[[k % 2, (k // 3) % 2]]).obs)
            return np.stack(obs)

    np.testing.assert_array_equal(rollout(7), rollout(7))
    assert not np.array_equal(rollout(7), rollout(8))


def test_cartpole_spec_and_steps():
    spec = make_env_spec("CartPole-v1")
    assert spec == EnvSpec(
        obs_shape=(4,), obs_dtype=np.dtype(np.float32), action_dim=2, discrete=True
    )
    with VectorEnv("CartPole-v1", 3, seed=0) as env:
        assert env.spec == spec
        obs = env.reset()
        assert obs.shape == (3, 4) and obs.dtype == np.float32
        for _ in range(5):
            out = env.step(np.tile(np.float32([0.2, 0.8]), (3, 1)))
            np.testing.assert_array_equal(out.transition.obs, obs)
            obs = out.obs
            assert out.transition.reward.shape == (3,)


def test_pendulum_spec_and_truncation_keeps_final_obs():
    spec = make_env_spec("Pendulum-v1")
    assert not spec.discrete and spec.action_dim == 1 and spec.obs_shape == (3,)
    np.testing.assert_array_equal(spec.action_low, [-2.0])
    np.testing.assert_array_equal(spec.action_high, [2.0])
    with VectorEnv("Pendulum-v1", 2, seed=1, env_kwargs={"max_episode_steps": 3}) as env:
        obs = env.reset()
        for _ in range(3):
            out = env.step(np.float32([[-1.0], [1.0]]))
            np.testing.assert_array_equal(out.transition.obs, obs)
            obs = out.obs
        assert out.transition.truncated.all() and not out.transition.terminated.any()
        # The reset obs goes to the agent; the transition keeps the episode's own last obs.
        assert not np.allclose(out.transition.next_obs, out.obs)
        assert out.episode_lengths == [3, 3] and len(out.episode_returns) == 2


def test_unknown_env_id_raises_value_error_naming_the_id():
    with pytest.raises(ValueError, match=r"NoSuchEnv-v0.*pprint_registry"):
        VectorEnv("NoSuchEnv-v0", 2, seed=0)
    with pytest.raises(ValueError, match="NoSuchEnv-v0"):
        make_env_spec("NoSuchEnv-v0")
    # A malformed id is gymnasium's base error: the same usage error, not a traceback.
    for make in (make_env_spec, lambda env_id: VectorEnv(env_id, 2, seed=0)):
        with pytest.raises(ValueError, match=r"'cart pole'.*Malformed.*pprint_registry"):
            make("cart pole")


def test_bad_mode_and_bad_action_shape_raise_value_error():
    with pytest.raises(ValueError, match="mode"):
        VectorEnv("CartPole-v1", 2, seed=0, mode="threads")
    with VectorEnv("CartPole-v1", 2, seed=0) as env:
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros((2, 2), np.float32))
        env.reset()
        with pytest.raises(ValueError, match=r"\[N, 2\]"):
            env.step(np.zeros((2, 3), np.float32))


BOX_OBS = spaces.Box(-1.0, 1.0, (3,), np.float32)


@pytest.mark.parametrize(
    ("obs_space", "action_space", "pattern"),
    [
        (spaces.Dict({"x": BOX_OBS}), spaces.Discrete(2), r"Dict.*FlattenObservation"),
        (spaces.Tuple((BOX_OBS,)), spaces.Discrete(2), r"Tuple.*FlattenObservation"),
        (spaces.Discrete(5), spaces.Discrete(2), r"observation space Discrete.*Box"),
        (spaces.Box(0, 10, (3,), np.int64), spaces.Discrete(2), r"int64.*DtypeObservation"),
        (BOX_OBS, spaces.MultiDiscrete([2, 3]), r"MultiDiscrete.*at most 1024 joint actions"),
        (BOX_OBS, spaces.Box(-np.inf, np.inf, (2,), np.float32), r"finite bounds.*RescaleAction"),
        (BOX_OBS, spaces.Box(-1.0, 1.0, (2, 2), np.float32), r"1-D"),
    ],
)
def test_unsupported_spaces_raise_helpful_error(obs_space, action_space, pattern):
    with pytest.raises(UnsupportedSpaceError, match=pattern):
        spec_from_spaces(obs_space, action_space)


def test_discrete_tuple_dict_and_integer_observations_are_flattened_to_float32_boxes():
    """Any gymnasium id just works: a Discrete observation (FrozenLake) becomes its one-hot, a
    Tuple of Discretes (Blackjack) the concatenated one-hots, a Dict its flattened leaves and an
    integer Box a float32 one, the same in make_env_spec, make_env and the vector env."""
    cases = {
        "FrozenLake-v1": (16,),
        "Blackjack-v1": (32 + 11 + 2,),
        DICT_OBS_ID: (2,),
        INT_OBS_ID: (3,),
    }
    for env_id, shape in cases.items():
        spec = make_env_spec(env_id)
        assert (spec.obs_shape, spec.obs_dtype) == (shape, np.float32), env_id
        env = make_env(env_id)
        obs, _ = env.reset(seed=0)
        assert obs.shape == shape and obs.dtype == np.float32, env_id
        env.close()
        with VectorEnv(env_id, 2, seed=0) as venv:
            obs = venv.reset()
            assert obs.shape == (2, *shape) and obs.dtype == np.float32, env_id
            out = venv.step(np.eye(spec.action_dim, dtype=np.float32)[[0, 1 % spec.action_dim]])
            assert out.obs.shape == (2, *shape) and out.obs.dtype == np.float32, env_id
    with VectorEnv("FrozenLake-v1", 2, seed=0) as venv:  # the start square's one-hot
        np.testing.assert_array_equal(venv.reset(), np.eye(16, dtype=np.float32)[[0, 0]])
    with VectorEnv(INT_OBS_ID, 1, seed=0) as venv:
        np.testing.assert_array_equal(venv.reset(), [[1.0, 2.0, 3.0]])


@pytest.mark.parametrize(
    ("action_space", "joint"),
    [
        (spaces.MultiDiscrete([3, 2], start=[1, -1]), [[1, -1], [1, 0], [2, -1], [2, 0], [3, -1]]),
        (spaces.MultiBinary(2), [[0, 0], [0, 1], [1, 0], [1, 1]]),
        (spaces.Box(-1, 1, (2,), np.int32), [[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 0]]),
        (spaces.Box(0, 3, (1,), np.int32), [[0], [1], [2], [3]]),  # gymnasium's tabular envs
    ],
)
def test_multi_part_and_integer_actions_become_one_discrete_over_their_joint_actions(
    action_space, joint
):
    """Any gymnasium id just works: a MultiDiscrete, MultiBinary or integer Box action space
    is one Discrete whose k-th action is the k-th joint action (last element fastest), in
    make_env_spec, make_env and the vector env (which steps it on its one-hot)."""
    kwargs = {"action_space": action_space}
    n = int(np.prod(action_space.nvec)) if hasattr(action_space, "nvec") else None
    n = n or (4 if isinstance(action_space, spaces.MultiBinary) else None)
    n = n or int(np.prod(action_space.high.astype(int) - action_space.low.astype(int) + 1))
    spec = make_env_spec(MULTI_ACTION_ID, kwargs)
    assert spec.discrete and spec.action_dim == n and spec.action_start == 0
    env = make_env(MULTI_ACTION_ID, kwargs)
    env.reset(seed=0)
    seen = [env.step(k)[0][: action_space.shape[0]].tolist() for k in range(n)]
    assert seen[: len(joint)] == joint and len({str(x) for x in seen}) == n
    env.close()
    with VectorEnv(MULTI_ACTION_ID, 2, seed=0, env_kwargs=kwargs) as venv:
        venv.reset()
        out = venv.step(np.eye(n, dtype=np.float32)[[1, n - 1]])
        np.testing.assert_array_equal(out.obs[:, : action_space.shape[0]], [seen[1], seen[-1]])


@pytest.mark.parametrize(
    ("action_space", "low", "high"),
    [
        (spaces.Box(-3.0, 3.0, (2, 1), np.float32), [-3, -3], [3, 3]),
        (spaces.Box(-np.inf, np.inf, (2,), np.float32), [-1, -1], [1, 1]),
        (spaces.Box(np.r_[0, -np.inf], np.r_[np.inf, 5], None, np.float32), [0, 3], [2, 5]),
    ],
)
def test_a_box_action_that_is_not_flat_or_not_finite_gets_a_flat_finite_box_the_env_accepts(
    action_space, low, high, caplog
):
    """Any gymnasium id just works: a float Box action of another shape is flattened, and an
    unbounded side gets a bound 2 from the other (both: [-1, 1]) with a warning, in
    make_env_spec, make_env and the vector env; the env receives actions in its own shape and
    space (MultiActionEnv asserts it) and observes them."""
    env_make._warn_unbounded.cache_clear()  # it warns once per space and process
    kwargs = {"action_space": action_space}
    spec = make_env_spec(MULTI_ACTION_ID, kwargs)
    assert not spec.discrete and spec.action_dim == 2
    np.testing.assert_array_equal(spec.action_low, low)
    np.testing.assert_array_equal(spec.action_high, high)
    assert ("is unbounded" in caplog.text) == (not action_space.is_bounded("both"))
    env = make_env(MULTI_ACTION_ID, kwargs)
    env.reset(seed=0)
    np.testing.assert_array_equal(env.step(np.array(high, np.float32))[0], high)
    env.close()
    with VectorEnv(MULTI_ACTION_ID, 2, seed=0, env_kwargs=kwargs) as venv:
        venv.reset()
        out = venv.step(np.array([[1.0, -1.0], [0.0, 0.0]], np.float32))  # the agent's [-1, 1]
        middle = (np.array(low) + np.array(high)) / 2
        np.testing.assert_allclose(out.obs, [[high[0], low[1]], middle])


def _missing_package_env():
    import wm_jax_no_such_package  # noqa: F401  # the env's module needs a package not installed


gymnasium.register("WmJaxTest/MissingPackage-v0", entry_point=_missing_package_env)


def test_a_registered_env_whose_package_is_missing_names_the_package_to_install():
    """Hopper-v5 without MuJoCo's packages said "Unknown or unavailable environment id": a
    registered id is not unknown, and the message names what to install."""
    with pytest.raises(ValueError, match=r"is registered but needs a package.*wm_jax_no_such"):
        make_env_spec("WmJaxTest/MissingPackage-v0")
    try:
        import imageio  # noqa: F401
        import mujoco  # noqa: F401
    except ImportError:  # gymnasium's own envs name their gymnasium extra
        with pytest.raises(ValueError, match=r"Hopper-v5 .*gymnasium\[mujoco\]"):
            make_env_spec("Hopper-v5")


def test_mujoco_renders_off_screen_on_a_headless_linux_machine_unless_the_user_chose():
    code = "import os, wm_jax.env_make; print(os.environ.get('MUJOCO_GL'))"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL")}
    runs = {
        "headless": env,
        "chosen": {**env, "MUJOCO_GL": "osmesa"},
        "display": {**env, "DISPLAY": ":0"},
    }
    seen = {
        name: subprocess.run(
            [sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True
        ).stdout.strip()
        for name, e in runs.items()
    }
    headless = "egl" if sys.platform.startswith("linux") else "None"
    assert seen == {"headless": headless, "chosen": "osmesa", "display": "None"}


def test_tabular_cliff_walking_and_too_many_joint_actions():
    # tabular/CliffWalking-v0 acts with Box(0, 3, (1,), int32): now four discrete actions.
    assert make_env_spec("tabular/CliffWalking-v0").action_dim == 4
    with pytest.raises(UnsupportedSpaceError, match=r"MultiBinary\(11\).*at most 1024"):
        make_env_spec(MULTI_ACTION_ID, {"action_space": spaces.MultiBinary(11)})


def test_evaluation_episodes_of_an_env_without_a_time_limit_are_cut_instead_of_hanging(
    monkeypatch, caplog
):
    """A deterministic policy can keep an env with no time limit going forever (CliffWalking's
    wall): run_episodes cuts such episodes, scores them so far and says how to set a limit; a
    declared limit (env_kwargs) is the env's own and nothing is cut."""
    monkeypatch.setattr(vector_env, "UNLIMITED_EPISODE_STEPS", 7)
    act = lambda obs, t: np.eye(2, dtype=np.float32)[[0, 1]]  # noqa: E731
    with VectorEnv(ENDLESS_ID, 2, seed=0) as env:
        assert env.time_limit is None
        np.testing.assert_array_equal(env.run_episodes(act), [7.0, 7.0])
    assert "declares no time limit" in caplog.text and "max_episode_steps" in caplog.text
    with VectorEnv(ENDLESS_ID, 2, seed=0, env_kwargs={"max_episode_steps": 12}) as env:
        assert env.time_limit == 12
        np.testing.assert_array_equal(env.run_episodes(act), [12.0, 12.0])
    for env_id, limit in (("CliffWalking-v1", None), ("CartPole-v1", 500)):
        with VectorEnv(env_id, 1, seed=0) as env:
            assert env.time_limit == limit


def test_async_workers_of_a_gymnasium_env_that_computes_with_jax_are_spawned_and_step():
    # Forked from a process where JAX runs, such a worker deadlocked (the run hung): they are
    # spawned instead, and step as the sync envs do.  Other envs keep the default (fork).
    jax.numpy.ones(3).block_until_ready()  # JAX's threads running in this process
    assert async_context("tabular/CliffWalking-v0", "async") == "spawn"
    assert async_context("tabular/CliffWalking-v0", "sync") is None
    assert async_context("CartPole-v1", "async") is None
    actions = np.array([[0, 1, 0, 0], [0, 0, 1, 0]], np.float32)  # one-hot: right, down
    returns = {}
    for mode in ("async", "sync"):
        with VectorEnv("tabular/CliffWalking-v0", 2, seed=0, mode=mode) as env:
            assert env.reset().shape == (2, 1)
            steps = [env.step(actions) for _ in range(3)]
            returns[mode] = [np.append(out.transition.reward, out.obs) for out in steps]
    np.testing.assert_array_equal(returns["async"], returns["sync"])
    assert np.asarray(returns["sync"]).any()  # the steps moved and paid rewards


def test_a_space_that_does_not_flatten_is_still_refused_by_name():
    with pytest.raises(UnsupportedSpaceError, match="observation space Text"):
        make_env_spec(TEXT_OBS_ID)
    with pytest.raises(UnsupportedSpaceError, match="observation space Text"):
        VectorEnv(TEXT_OBS_ID, 2, seed=0)


def test_an_env_whose_package_is_missing_names_the_install_instead_of_a_traceback():
    for make in (make_env_spec, lambda env_id: VectorEnv(env_id, 2, seed=0)):
        with pytest.raises(ValueError, match=r"needs a package that is not installed.*pip install"):
            make(MISSING_DEPENDENCY_ID)


def test_uint8_image_observations_are_supported():
    spec = spec_from_spaces(spaces.Box(0, 255, (8, 8, 3), np.uint8), spaces.Discrete(4, start=1))
    assert spec.obs_dtype == np.uint8 and spec.obs_shape == (8, 8, 3)
    assert spec.action_dim == 4 and spec.action_start == 1 and spec.action_low is None


def test_discrete_actions_round_trip_with_nonzero_start_and_accept_logits():
    spec = spec_from_spaces(BOX_OBS, spaces.Discrete(4, start=3))
    env_actions = np.array([3, 4, 5, 6, 3])
    one_hot = from_env_action(env_actions, spec)
    assert one_hot.dtype == np.float32 and one_hot.shape == (5, 4)
    np.testing.assert_array_equal(one_hot.sum(-1), 1.0)
    np.testing.assert_array_equal(to_env_action(one_hot, spec), env_actions)
    logits = np.array([[0.1, -2.0, 3.0, 0.0]], np.float32)
    np.testing.assert_array_equal(to_env_action(logits, spec), [5])
    with pytest.raises(ValueError, match="Discrete actions"):
        from_env_action(np.array([7]), spec)


def test_box_actions_rescale_round_trip_and_clip():
    spec = spec_from_spaces(BOX_OBS, spaces.Box(np.float32([-2, 0]), np.float32([2, 10])))
    np.testing.assert_allclose(
        to_env_action(np.float32([[-1, -1], [0, 0], [1, 1], [5, -5]]), spec),
        [[-2, 0], [0, 5], [2, 10], [2, 0]],
    )
    env_actions = np.random.default_rng(0).uniform([-2, 0], [2, 10], size=(16, 2))
    unit = from_env_action(env_actions, spec)
    assert unit.dtype == np.float32 and np.all(np.abs(unit) <= 1.0)
    np.testing.assert_allclose(to_env_action(unit, spec), env_actions, rtol=1e-5, atol=1e-5)


def test_run_episodes_returns_each_envs_first_episode_return():
    """Even ids terminate after 3 steps (rewards 1+2+3), odd ids are truncated after 4
    (1+2+3+4); action 2 adds 10 per step.  Envs that finish first idle until the last one does."""
    with VectorEnv(COUNTER_ID, 4, 0, "sync") as env:
        steps_seen, first_obs = [], []

        def act(obs, t):
            steps_seen.append(t)
            if t == 0:
                first_obs.append(obs)
            return np.tile(np.array([[0.0, 1.0]], np.float32), (4, 1))  # action 2 everywhere

        returns = env.run_episodes(act)
    ids = first_obs[0][:, 0].astype(int)
    assert (first_obs[0][:, 1] == 0).all()  # every env starts from a reset
    expected = [6.0 + 30.0 if i % 2 == 0 else 10.0 + 40.0 for i in ids]
    np.testing.assert_array_equal(returns, expected)
    assert steps_seen == list(range(4 if any(i % 2 for i in ids) else 3))
