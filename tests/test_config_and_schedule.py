import jax.numpy as jnp
import pytest
from conftest import small_config

from wm_jax.config import ConfigError, get_config, parse_lr_sweep, validate
from wm_jax.schedule import UpdateCounts, critic_real_mix, later_counts, phase, update_counts


def test_defaults_follow_the_seeds():
    c = validate(get_config())
    assert (c.model.feature_dim, c.model.state_dim, c.model.hidden_dim) == (256, 64, 256)
    assert (c.imagination.horizon, c.imagination.gamma, c.imagination.lambda_) == (15, 0.99, 0.95)
    assert (c.world_model.lr, c.actor.lr, c.critic.lr) == (1e-4, 3e-5, 3e-5)
    assert c.world_model.grad_clip == c.actor.grad_clip == c.critic.grad_clip == 1.0
    assert c.actor.entropy_coef == 0.01


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"imagination.horizon": 0}, "imagination.horizon"),
        ({"actor.lr": -1.0}, "actor.lr"),
        ({"imagination.gamma": 1.5}, "imagination.gamma"),
        ({"world_model.dynamics_loss": "l1"}, "world_model.dynamics_loss"),
        (
            {"schedule.transition_steps": 10, "schedule.warmup_steps": 100},
            "schedule.transition_steps",
        ),
        ({"critic.target_update_rate": 0.0}, "critic.target_update_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 512, "replay_capacity": 256}, "batch_size"),
        (
            {
                "sequence_mode": True,
                "sequence_length": 32,
                "batch_size": 16,
                "replay_capacity": 500,
            },
            "batch_size",
        ),
        ({"critic.lr": -3e-4}, "critic.lr"),
        ({"world_model.lr": -1.0}, "world_model.lr"),
        ({"env_check": "ignore"}, "env_check"),
        ({"max_abs_reward": 0.0}, "max_abs_reward"),
        ({"env_id": ""}, "env_id"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
    ],
)
def test_impossible_values_are_rejected_naming_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"config.{field}"):
        validate(small_config(**overrides))


def schedule(**kw):
    s = get_config().schedule
    for k, v in kw.items():
        s[k] = v
    return s


def test_warmup_forces_actor_and_critic_to_zero():
    s = schedule()
    assert update_counts(0, s) == UpdateCounts(1, 0, 0)
    assert update_counts(4_999, s) == UpdateCounts(1, 0, 0)
    assert update_counts(5_000, s) == UpdateCounts(1, 1, 1)
    assert [phase(t, s) for t in (0, 5_000, 10_000)] == ["warmup", "transition", "full"]


def test_multi_update_schedule_early_and_late():
    s = schedule(multi_update=True)
    assert update_counts(7_000, s) == UpdateCounts(1, 1, 1)  # transition: plain counts
    assert update_counts(20_000, s) == UpdateCounts(2, 1, 1)  # early full training
    assert update_counts(60_000, s) == UpdateCounts(1, 2, 2)  # late full training


def test_traced_schedule_matches_python_schedule():
    s = schedule(multi_update=True)
    for t in (0, 5_000, 7_000, 20_000, 60_000):
        traced = update_counts(jnp.asarray(t), s)
        assert tuple(int(x) for x in traced) == tuple(update_counts(t, s))
        assert float(critic_real_mix(jnp.asarray(t), s)) == pytest.approx(critic_real_mix(t, s))


def test_critic_real_mix_anneals_from_one_to_zero_over_the_transition():
    s = schedule()
    assert critic_real_mix(0, s) == 1.0
    assert critic_real_mix(5_000, s) == 1.0
    assert critic_real_mix(7_500, s) == pytest.approx(0.5)
    assert critic_real_mix(10_000, s) == 0.0
    assert critic_real_mix(50_000, s) == 0.0


def test_critic_real_mix_can_keep_a_floor_of_real_targets():
    s = get_config().schedule
    s.final_real_mix = 0.25
    assert critic_real_mix(5_000, s) == 1.0
    assert critic_real_mix(7_500, s) == pytest.approx(0.625)
    assert critic_real_mix(50_000, s) == pytest.approx(0.25)
    assert float(critic_real_mix(jnp.asarray(50_000), s)) == pytest.approx(0.25)


def test_a_sequence_longer_than_any_episode_is_rejected_before_training(tmp_path):
    from wm_jax.trainer import Trainer

    c = small_config(sequence_mode=True, sequence_length=16)
    c.env_kwargs.max_episode_steps = 10
    with pytest.raises(ConfigError, match=r"config.sequence_length: 16 .*max_episode_steps=10"):
        Trainer(c, str(tmp_path))
    c = small_config(**{"diagnostics.open_loop_horizon": 50})
    c.env_kwargs.max_episode_steps = 10
    with pytest.raises(
        ConfigError, match="config.diagnostics.open_loop_horizon.*open_loop_every=0"
    ):
        Trainer(c, str(tmp_path))


def test_lr_sweep_is_parsed_and_bad_sweeps_name_the_field():
    c = get_config()
    c.loop = "device"
    c.lr_sweep = "actor=1e-4, 3e-4"
    assert parse_lr_sweep(c) == ("actor", (1e-4, 3e-4))
    c.lr_sweep = ""
    assert parse_lr_sweep(c) is None
    for sweep, field in (
        ("policy=1e-4", "lr_sweep"),
        ("actor=fast", "lr_sweep"),
        ("actor=1e-4,-1", "lr_sweep"),
        ("actor=", "lr_sweep"),
    ):
        c.lr_sweep = sweep
        with pytest.raises(ConfigError, match=f"config.{field}"):
            validate(c)
    c.lr_sweep, c.loop = "critic=1e-4", "host"
    with pytest.raises(ConfigError, match="loop=device"):
        validate(c)
    c.loop, c.critic.lr = "device", 0.0
    with pytest.raises(ConfigError, match="config.critic.lr"):
        validate(c)


def test_a_field_the_config_does_not_have_is_refused_with_the_closest_name():
    from wm_jax.config import check_known_fields

    c = get_config()
    with c.unlocked():
        c.actor.lrr = 1e-4
        c.env_kwargs.anything_goes = 3  # the env's own keyword arguments are not checked
    with pytest.raises(
        ConfigError,
        match=r"config.actor.lrr: not a config field; did you mean "
        r"'actor.lr'\?",
    ):
        check_known_fields(c)
    check_known_fields(get_config())


def test_every_rule_of_the_table_names_a_config_field():
    # A misspelt field would pass unnoticed where its rule has a default or a condition.
    from wm_jax.config import _field_paths
    from wm_jax.config_rules import RULES, Rule

    named = {rule.field for rule in RULES if isinstance(rule, Rule)}
    assert named and named <= _field_paths(get_config()), named - _field_paths(get_config())


@pytest.mark.parametrize("multi_update", [False, True])
@pytest.mark.parametrize("start,end", [(0, 30_000), (1_000, 60_000), (7_000, 60_000), (0, 4_000)])
def test_later_counts_lists_each_new_update_count_a_host_run_meets_in_order(
    multi_update, start, end
):
    s = get_config().schedule
    s.warmup_steps, s.transition_steps, s.early_late_boundary = 5_000, 10_000, 50_000
    s.multi_update, s.early_wm_updates, s.late_actor_updates = multi_update, 3, 2
    met = []
    for step in range(start, end, 4):  # every env step a 4-env host run visits
        counts = update_counts(step, s)
        if counts not in met:
            met.append(counts)
    assert later_counts(start, end, s) == met[1:]
