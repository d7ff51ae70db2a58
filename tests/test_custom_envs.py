"""Bring your own environment: odd-shape gymnasium spaces, the PointMass example and ``gymnax:``
ids go through the same VectorEnv semantics (boundaries, cont, seeding, exact resume) and train
through the Trainer."""

from __future__ import annotations

import sys

import gymnasium
import jax
import numpy as np
import pytest
from conftest import REPO, small_config
from gymnasium import spaces

from wm_jax.config import ConfigError
from wm_jax.envs import (
    UnsupportedSpaceError,
    VectorEnv,
    episode_seed,
    from_env_action,
    make_env_spec,
    to_env_action,
)
from wm_jax.replay import ReplayBuffer
from wm_jax.trainer import Trainer

if REPO not in sys.path:  # 'experiments.envs.custom:PointMass-v0' imports from the repo root
    sys.path.insert(0, REPO)

gymnax = pytest.importorskip("gymnax")

WIDE_ID = "WmJaxTest/Wide17x6-v0"
SEVEN_ID = "WmJaxTest/Seven-v0"
POINT_MASS_ID = "experiments.envs.custom:PointMass-v0"


class WideEnv(gymnasium.Env):
    """17-D observation, 6-D action in [-2, 2]; fails on any action outside its space and
    records the largest |action| it was given."""

    observation_space = spaces.Box(-1.0, 1.0, (17,), np.float32)
    action_space = spaces.Box(-2.0, 2.0, (6,), np.float32)
    mixing = np.random.default_rng(0).normal(0.0, 0.2, (17, 6))
    largest_action = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._x = self.np_random.uniform(-0.5, 0.5, 17)
        return self._x.astype(np.float32), {}

    def step(self, action):
        assert action.dtype == np.float32 and action.shape == (6,), (action.dtype, action.shape)
        assert np.all(np.abs(action) <= 2.0), action
        WideEnv.largest_action = max(WideEnv.largest_action, float(np.abs(action).max()))
        self._x = np.tanh(0.9 * self._x + self.mixing @ action)
        return self._x.astype(np.float32), -float(np.mean(self._x**2)), False, False, {}


class SevenEnv(gymnasium.Env):
    """Discrete(7) actions: reward 1 for naming the target in the observation, action 0 ends
    the episode; fails on any action that is not an integer in range."""

    observation_space = spaces.Box(0.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(7)
    actions_seen: set[int] = set()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._target, self._t = int(self.np_random.integers(1, 7)), 0
        return self._obs(), {}

    def _obs(self):
        return np.array([self._t / 20, self._target / 6, 1.0], np.float32)

    def step(self, action):
        assert isinstance(action, np.integer) and 0 <= action < 7, action
        SevenEnv.actions_seen.add(int(action))
        self._t += 1
        return self._obs(), float(action == self._target), bool(action == 0), False, {}


gymnasium.register(WIDE_ID, entry_point=WideEnv, max_episode_steps=50)
gymnasium.register(SEVEN_ID, entry_point=SevenEnv, max_episode_steps=20)


def tiny_config(env_id: str):
    """~200 env steps with full (world model + actor + critic) updates from the first one, so a
    run compiles one train-step variant."""
    return small_config(
        env_id=env_id,
        total_env_steps=200,
        prefill_steps=48,
        replay_capacity=1000,
        eval_every=0,
        checkpoint_every=0,
        log_every=100,
        report=False,
        **{
            "schedule.warmup_steps": 0,
            "schedule.transition_steps": 0,
            "diagnostics.open_loop_every": 0,
            "model.feature_dim": 16,
            "model.hidden_dim": 16,
            "model.hidden_layers": 1,
            "imagination.horizon": 3,
        },
    )


def train_briefly(env_id: str, workdir) -> Trainer:
    trainer = Trainer(tiny_config(env_id), str(workdir))
    try:
        result = trainer.run()
    finally:
        trainer.close()
    assert result.env_steps == 200 and trainer.updates > 0
    for leaf in jax.tree.leaves(trainer.state):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
    return trainer


def one_hot(indices, n):
    return np.eye(n, dtype=np.float32)[np.asarray(indices)]


# ------------------------------------------------------------------ odd-shape gymnasium envs


def test_wide_box_spec_and_actions_map_to_its_bounds():
    spec = make_env_spec(WIDE_ID)
    assert (spec.obs_shape, spec.obs_dtype, spec.action_dim, spec.discrete) == (
        (17,),
        np.float32,
        6,
        False,
    )
    assert np.array_equal(spec.action_low, [-2.0] * 6) and np.array_equal(spec.action_high, [2] * 6)
    agent = np.array([[-1.0, 0.0, 1.0, -3.0, 3.0, 0.5]], np.float32)  # ±3: exploration overshoot
    env_action = to_env_action(agent, spec)
    assert env_action.dtype == np.float32 and env_action.shape == (1, 6)
    np.testing.assert_array_equal(env_action, [[-2.0, 0.0, 2.0, -2.0, 2.0, 1.0]])
    np.testing.assert_allclose(from_env_action(env_action, spec), np.clip(agent, -1, 1))


def test_seven_actions_spec_and_argmax_to_int64():
    spec = make_env_spec(SEVEN_ID)
    assert (spec.obs_shape, spec.action_dim, spec.discrete, spec.max_episode_steps) == (
        (3,),
        7,
        True,
        20,
    )
    logits = np.array([[0.1, 0, 0, 0, 0, 0, 0.9], [5, 1, 1, 1, 1, 1, 1]], np.float32)
    env_action = to_env_action(logits, spec)
    assert env_action.dtype == np.int64 and env_action.tolist() == [6, 0]
    np.testing.assert_array_equal(from_env_action(env_action, spec), one_hot([6, 0], 7))


@pytest.mark.slow
def test_a_discrete_observation_env_trains_and_its_saved_policy_acts_on_make_env_observations(
    tmp_path,
):
    """FrozenLake's Discrete(16) observation, flattened to a one-hot in training, evaluation and
    make_env alike: a run trains on it, and the policy loaded from its checkpoint acts on
    make_env's observations (and says where they come from when given the raw integer)."""
    import wm_jax
    from wm_jax.envs import make_env

    c = tiny_config("FrozenLake-v1")
    c.checkpoint_every = 200
    trainer = Trainer(c, str(tmp_path))
    try:
        trainer.run()
    finally:
        trainer.close()
    assert trainer.spec.obs_shape == (16,)
    policy = wm_jax.load_policy(str(tmp_path))
    env = make_env("FrozenLake-v1")
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs, _, terminated, truncated, _ = env.step(int(policy.act(obs)))
        if terminated or truncated:
            break
    env.close()
    with pytest.raises(ValueError, match="make_env"):
        policy.act(np.int64(0))


@pytest.mark.slow
@pytest.mark.parametrize("env_id", [WIDE_ID, SEVEN_ID])
def test_trainer_trains_on_odd_spaces_with_actions_inside_them(env_id, tmp_path):
    train_briefly(env_id, tmp_path)  # the envs assert every action's dtype and range
    if env_id == WIDE_ID:
        assert 1.5 < WideEnv.largest_action <= 2.0  # the bounds are used, never exceeded
    else:
        assert SevenEnv.actions_seen == set(range(7))


@pytest.mark.slow
def test_point_mass_example_reaches_its_goal_and_terminates():
    spec = make_env_spec(POINT_MASS_ID)
    assert (spec.obs_shape, spec.action_dim, spec.discrete, spec.max_episode_steps) == (
        (6,),
        2,
        False,
        200,
    )
    with VectorEnv(POINT_MASS_ID, 2, seed=0) as env:
        obs = env.reset()
        for _ in range(200):
            towards_goal = np.clip(5.0 * (obs[:, 4:6] - obs[:, 0:2]) - obs[:, 2:4], -1, 1)
            out = env.step(towards_goal.astype(np.float32))
            if out.transition.terminated.all():
                break
            obs = out.obs
        assert out.transition.terminated.all() and not out.transition.truncated.any()
        assert np.all(out.transition.reward > -0.1)  # the last step is inside the goal radius


# ----------------------------------------------------------------------------- gymnax ids


def test_gymnax_specs_convert_spaces_and_env_kwargs():
    cartpole = make_env_spec("gymnax:CartPole-v1")
    assert (cartpole.obs_shape, cartpole.action_dim, cartpole.max_episode_steps) == ((4,), 2, 500)
    # A 10×5 float 0/1 board becomes a 1-channel uint8 image; MinAtar's 0/1 channels too.
    catch = make_env_spec("gymnax:Catch-bsuite")
    assert (catch.obs_shape, catch.obs_dtype, catch.action_dim) == ((10, 5, 1), np.uint8, 3)
    breakout = make_env_spec("gymnax:Breakout-MinAtar")
    assert (breakout.obs_shape, breakout.obs_dtype) == ((10, 10, 4), np.uint8)
    pendulum = make_env_spec("gymnax:Pendulum-v1")
    assert not pendulum.discrete and pendulum.action_high.tolist() == [2.0]
    small = make_env_spec("gymnax:Catch-bsuite", {"rows": 6, "max_episode_steps": 7})
    assert (small.obs_shape, small.max_episode_steps) == ((6, 5, 1), 7)
    with pytest.raises(UnsupportedSpaceError, match="not a Box"):
        make_env_spec("gymnax:FrozenLake-misc")


def gymnax_reset_obs(name: str, seed: int, env_index: int, episode: int):
    """The documented seeding: gymnax reset with the first half of PRNGKey(episode seed)."""
    env, params = gymnax.make(name)
    key = jax.random.split(jax.random.PRNGKey(episode_seed(seed, env_index, episode)))[0]
    return np.asarray(env.reset(key, params)[0])


def test_gymnax_cartpole_termination_keeps_final_obs_then_resets_from_episode_seed():
    env_model, params = gymnax.make("CartPole-v1")
    replay = ReplayBuffer(64, 2, (4,), np.float32, 2)
    with VectorEnv("gymnax:CartPole-v1", 2, seed=5) as env:
        obs = env.reset()
        for i in range(2):
            np.testing.assert_array_equal(obs[i], gymnax_reset_obs("CartPole-v1", 5, i, 0))
        for t in range(1, 100):  # always push right: the pole falls within ~10 steps
            out = env.step(one_hot([1, 1], 2))
            replay.add(*out.transition)
            for i in range(2):  # gymnax's own step from the observed state (obs = state)
                state = env_model.reset(jax.random.PRNGKey(0), params)[1].replace(
                    x=obs[i, 0], x_dot=obs[i, 1], theta=obs[i, 2], theta_dot=obs[i, 3], time=t - 1
                )
                expected = env_model.step_env(jax.random.PRNGKey(0), state, 1, params)[0]
                np.testing.assert_allclose(out.transition.next_obs[i], expected, atol=1e-6)
            if out.transition.terminated.any():
                break
            np.testing.assert_array_equal(out.obs, out.transition.next_obs)
            obs = out.obs
    ended = np.flatnonzero(out.transition.terminated)
    assert not out.transition.truncated.any() and out.episode_lengths == [t] * len(ended)
    for i in ended:  # next_obs is the fallen pole, obs the next episode's seeded reset
        assert abs(out.transition.next_obs[i, 2]) > 12 * 2 * np.pi / 360
        np.testing.assert_array_equal(out.obs[i], gymnax_reset_obs("CartPole-v1", 5, i, 1))
    cont = replay.state_dict()["cont"][:, :t]
    assert np.array_equal(cont[:, -1], 1.0 - out.transition.terminated) and cont[:, :-1].all()


def test_gymnax_time_limit_is_truncation_with_cont_one():
    replay = ReplayBuffer(64, 3, (10, 5, 1), np.uint8, 3)
    with VectorEnv("gymnax:Catch-bsuite", 3, seed=1, env_kwargs={"max_episode_steps": 4}) as env:
        env.reset()
        for _ in range(4):
            out = env.step(one_hot([1, 1, 1], 3))  # no-op: the ball is 5 rows from the bottom
            replay.add(*out.transition)
    assert out.transition.truncated.all() and not out.transition.terminated.any()
    assert np.all(replay.state_dict()["cont"][:, :4] == 1.0)
    assert np.all(out.transition.next_obs[:, 4].sum(axis=(1, 2), dtype=int) == 255)  # ball row 4
    for i in range(3):  # gymnax's float 0/1 board, as uint8 {0, 255}
        expected = 255 * gymnax_reset_obs("Catch-bsuite", 1, i, 1)
        np.testing.assert_array_equal(out.obs[i, ..., 0], expected.astype(np.uint8))


def test_gymnax_catch_ends_with_the_ball_on_the_bottom_row():
    with VectorEnv("gymnax:Catch-bsuite", 2, seed=3) as env:
        env.reset()
        for _ in range(9):
            out = env.step(one_hot([0, 2], 3))
    t = out.transition
    assert t.terminated.all() and not t.truncated.any() and set(t.reward) <= {-1.0, 1.0}
    assert np.all(t.next_obs[:, :9].sum(axis=(1, 2, 3)) == 0)  # ball and paddle on row 9
    assert np.all(out.obs[:, 0].sum(axis=(1, 2), dtype=int) == 255)  # the new ball at the top
    assert out.episode_lengths == [9, 9]


def test_gymnax_resume_from_state_dict_gives_identical_obs_and_transitions():
    rng = np.random.default_rng(0)
    actions = one_hot(rng.integers(0, 2, (60, 3)), 2)
    with VectorEnv("gymnax:CartPole-v1", 3, seed=7) as env:
        env.reset()
        ends = sum(len(env.step(a).episode_returns) for a in actions[:40])
        assert ends > 0  # the saved state is mid-episode after some resets
        state = env.state_dict()
        with VectorEnv("gymnax:CartPole-v1", 3, seed=7) as resumed:
            resumed.reset()
            np.testing.assert_array_equal(resumed.load_state_dict(state), env.state_dict()["obs"])
            for a in actions[40:]:
                for x, y in zip(env.step(a).transition, resumed.step(a).transition, strict=True):
                    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_gymnax_cartpole_trains_through_the_trainer(tmp_path):
    # Catch trains too (CNN encoder on its [10, 5, 1] board), checked through the CLI: its CNN
    # compiles ~3x slower than this MLP, too slow for the suite.
    trainer = train_briefly("gymnax:CartPole-v1", tmp_path)
    assert trainer.spec.obs_shape == (4,) and trainer.episodes > 0


def test_unknown_gymnax_id_fails_at_startup_listing_registered_ids(tmp_path):
    with pytest.raises(ConfigError, match="Registered gymnax ids: CartPole-v1, .*Catch-bsuite"):
        Trainer(tiny_config("gymnax:CartPol-v1"), str(tmp_path))


def test_missing_gymnax_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnax", None)  # what `import gymnax` sees uninstalled
    with pytest.raises(ValueError, match=r'pip install "wm_jax\[gymnax\]"') as info:
        make_env_spec("gymnax:CartPole-v1")
    assert isinstance(info.value, ImportError)
