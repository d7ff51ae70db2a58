"""The checks of a config as a table: :data:`RULES`, in the order :func:`validate` runs them.

Most rules are a :class:`Rule`, one field and the predicate its value must satisfy; the few that
need code (several fields at once, parsing ``lr_sweep``) are small functions in the same table.
Every message names the field (``config.<field>: ...``) and, where there is one, the fix.
:mod:`wm_jax.config` re-exports :func:`validate`, :class:`ConfigError` and the rest.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field and the fix."""


def _require(cond: bool, field: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"config.{field}: {message}")


REQUIRED = object()  # a Rule's default: the field must be there
# Groups absent from the config.json of runs made before they existed: their rules are skipped.
OPTIONAL_GROUPS = ("wandb", "offline")


@dataclasses.dataclass(frozen=True)
class Rule:
    """``field``'s value must satisfy ``ok``; ``message`` is formatted with it (``{value!r}``)."""

    field: str
    ok: Callable[[Any], bool]
    message: str
    default: Any = REQUIRED  # the value of a field absent from older runs' config.json
    when: Callable[[ml_collections.ConfigDict], bool] | None = None  # checked only if true

    def __call__(self, c: ml_collections.ConfigDict) -> None:
        *groups, name = self.field.split(".")
        if groups and groups[0] in OPTIONAL_GROUPS and c.get(groups[0]) is None:
            return
        if self.when is not None and not self.when(c):
            return
        node = c
        for group in groups:
            node = node[group]
        value = self.default if self.default is not REQUIRED and name not in node else node[name]
        _require(self.ok(value), self.field, self.message.format(value=value))


POSITIVE_INT = "must be a positive integer, got {value!r}"


def _positive_int(v) -> bool:
    return isinstance(v, int) and v >= 1


def _non_negative_int(v) -> bool:
    return isinstance(v, int) and v >= 0


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _unit(v) -> bool:
    return 0.0 <= v <= 1.0


def _below_one(v) -> bool:
    return 0.0 <= v < 1.0


def _finite_non_negative(v) -> bool:
    return math.isfinite(v) and v >= 0


def one_of(field: str, allowed: tuple, default: Any = REQUIRED) -> Rule:
    return Rule(field, lambda v: v in allowed, f"{{value!r}} is not one of {allowed}", default)


def _is_transformer(c) -> bool:
    return c.model.dynamics == "transformer"


def _is_rssm(c) -> bool:
    return c.model.representation == "rssm" and c.model.dynamics == "rssm"


# --- the rules that need code ---------------------------------------------------------------


def _imports(c) -> None:
    imports = c.get("imports", "")  # absent from the config.json of runs made before it existed
    _require(isinstance(imports, str), "imports", f"must be a string, got {imports!r}")
    for name in (n.strip() for n in imports.split(",")):
        _require(
            not name or all(part.isidentifier() for part in name.split(".")),
            "imports",
            f"{name!r} is not a module name: give dotted module names separated by commas, e.g. "
            "'experiments.custom_dynamics'",
        )


def _heads_divide_width(c) -> None:
    m = c.model
    if not _is_transformer(c):
        return
    _require(
        m.hidden_dim % m.transformer_heads == 0,
        "model.transformer_heads",
        f"{m.transformer_heads} heads must divide the attention width model.hidden_dim="
        f"{m.hidden_dim}",
    )


def _rssm_pair(c) -> None:
    rssm = (c.model.representation == "rssm", c.model.dynamics == "rssm")
    _require(
        rssm[0] == rssm[1],
        "model.representation" if rssm[1] else "model.dynamics",
        "the RSSM is a representation + dynamics pair: set both model.representation=rssm "
        "and model.dynamics=rssm",
    )


def parse_lr_sweep(c: ml_collections.ConfigDict) -> tuple[str, tuple[float, ...]] | None:
    """``config.lr_sweep`` ("actor=1e-4,3e-4") as ``("actor", (1e-4, 3e-4))``; None if unset."""
    text = c.get("lr_sweep", "")
    if not text:
        return None
    group, _, values = text.partition("=")
    group = group.strip()
    _require(
        group in ("world_model", "actor", "critic") and values,
        "lr_sweep",
        f"{text!r} is not '<world_model|actor|critic>=lr1,lr2,...', e.g. 'actor=1e-4,3e-4'",
    )
    try:
        lrs = tuple(float(v) for v in values.split(","))
    except ValueError:
        _require(False, "lr_sweep", f"{values!r} is not a comma-separated list of numbers")
    _require(all(lr > 0 for lr in lrs), "lr_sweep", f"learning rates must be > 0, got {lrs}")
    _require(
        c[group].lr > 0,
        f"{group}.lr",
        "must be > 0 for a sweep (each run's lr is a multiple of it)",
    )
    _require(c.loop == "device", "lr_sweep", "needs --config.loop=device (one vmapped program)")
    return group, lrs


def _seeds_need_the_device_loop(c) -> None:
    _require(
        c.num_seeds == 1 or c.loop == "device",
        "num_seeds",
        "several seeds in one program need --config.loop=device (the host loop runs one seed)",
    )


def _replay_holds_a_sequence_per_env(c) -> None:
    _require(
        c.replay_capacity >= c.num_envs * max(c.sequence_length + 1, 2),
        "replay_capacity",
        f"must hold at least a sequence per env ({c.num_envs} envs × "
        f"{c.sequence_length + 1} steps), got {c.replay_capacity}",
    )


def _an_env_explores(c) -> None:
    greedy = c.actor.get("greedy_envs", 0)
    _require(
        isinstance(greedy, int) and 0 <= greedy < c.num_envs,
        "actor.greedy_envs",
        f"must be an integer in [0, num_envs) (at least one of the {c.num_envs} envs must sample "
        f"its actions; 0: every env samples), got {greedy!r}",
    )


def _batch_fits_in_replay(c) -> None:
    per_batch = c.batch_size * (c.sequence_length if c.sequence_mode else 1)
    _require(
        per_batch <= c.replay_capacity,
        "batch_size",
        f"a batch of {per_batch} transitions (batch_size={c.batch_size}"
        + (f" × sequence_length={c.sequence_length}" if c.sequence_mode else "")
        + f") does not fit in replay_capacity={c.replay_capacity}: lower batch_size or raise "
        "replay_capacity",
    )


def _actor_std_range(c) -> None:
    _require(
        0 < c.actor.min_std <= c.actor.max_std,
        "actor.min_std",
        "must satisfy 0 < actor.min_std <= actor.max_std",
    )


def _transition_after_warmup(c) -> None:
    s = c.schedule
    _require(
        s.transition_steps >= s.warmup_steps,
        "schedule.transition_steps",
        f"must be >= schedule.warmup_steps ({s.warmup_steps}), got {s.transition_steps}",
    )


# --- the table ------------------------------------------------------------------------------

WANDB_MODES = ("offline", "online")
OPTIMISERS = ("world_model", "actor", "critic")

# Component names (model.encoder, ...) are not here: they are checked against the registries
# when the networks are built (after config.imports ran), so users' own components are accepted.
# Whether wandb is installed is checked where a run starts logging (wm_jax.metric_sinks), so a
# saved run's config loads without it.
RULES: tuple[Callable[[ml_collections.ConfigDict], None], ...] = (
    _imports,
    one_of("model.state_norm", ("layernorm", "tanh", "none")),
    one_of("model.dynamics_std", ("learned", "fixed")),
    one_of("model.reward_std", ("learned", "fixed")),
    one_of("world_model.dynamics_loss", ("mse", "nll")),
    one_of("actor.gradient", ("dynamics", "reinforce")),
    one_of("imagination.continue_mode", ("probs", "mode", "calibrated")),
    one_of("critic.bootstrap", ("target", "online"), default="target"),
    one_of("critic.real_targets", ("lambda", "episode"), default="lambda"),
    *(
        one_of(f"{group}.grad_clip_mode", ("global", "per_module", "adaptive"), default="global")
        for group in OPTIMISERS
    ),
    *(
        Rule(field, _positive_int, POSITIVE_INT)
        for field in (
            "model.feature_dim",
            "model.state_dim",
            "model.hidden_dim",
            "model.cnn_depth",
            "model.cnn_layers",
            "model.ensemble_size",
            "model.rssm_deter",
            "model.rssm_stoch",
            "model.rssm_classes",
            "imagination.horizon",
            "imagination.unroll",
            "batch_size",
            "num_envs",
            "sequence_length",
            "total_env_steps",
            "replay_capacity",
            "eval_episodes",
            "keep_checkpoints",
            "max_nonfinite_updates",
            "diagnostics.open_loop_horizon",
            "diagnostics.open_loop_batch",
        )
    ),
    Rule("model.hidden_layers", _non_negative, "must be >= 0"),
    Rule("model.reward_fixed_std", _positive, "must be > 0"),
    *(
        Rule(f"model.{name}", _positive_int, POSITIVE_INT, default=None, when=_is_transformer)
        for name in ("context_length", "transformer_layers", "transformer_heads")
    ),
    _heads_divide_width,
    _rssm_pair,
    Rule(
        "sequence_mode",
        bool,
        "the RSSM learns from sequences (its state is recurrent): set sequence_mode=True",
        when=_is_rssm,
    ),
    Rule("world_model.kl_balance", _unit, "in [0, 1]", when=_is_rssm),
    Rule("world_model.kl_free_bits", _non_negative, "must be >= 0", when=_is_rssm),
    Rule("model.rssm_unimix", _below_one, "must be in [0, 1)", when=_is_rssm),
    one_of("precision", ("float32", "bfloat16", "auto"), default="float32"),
    one_of("model.norm", ("layer", "rms"), default="layer"),
    Rule("vector_mode", lambda v: v in ("sync", "async"), "must be 'sync' or 'async'"),
    one_of("loop", ("host", "device")),
    Rule(
        "env_id",
        lambda v: isinstance(v, str) and bool(v.strip()),
        "must name an environment, e.g. 'CartPole-v1', got {value!r}",
    ),
    Rule(
        "seed",
        lambda v: isinstance(v, int) and 0 <= v < 2**63,
        "must be an integer in [0, 2**63), got {value!r}",
    ),
    Rule("num_seeds", _positive_int, POSITIVE_INT),
    parse_lr_sweep,
    _seeds_need_the_device_loop,
    one_of("env_check", ("raise", "sanitize", "off")),
    Rule("max_abs_reward", _positive, "must be > 0, got {value}"),
    Rule("train_ratio", _positive, "must be > 0, got {value}"),
    *(
        Rule(name, _non_negative, "must be >= 0, got {value}")
        for name in ("prefill_steps", "eval_every", "log_every", "checkpoint_every")
    ),
    Rule(
        "eval_video_every",
        _non_negative_int,
        "must be an integer >= 0 (0: no video), got {value!r}",
        default=0,
    ),
    Rule("wandb.enabled", lambda v: isinstance(v, bool), "must be True or False, got {value!r}"),
    Rule(
        "wandb.mode",
        lambda v: v in WANDB_MODES,
        f"{{value!r}} is not one of {WANDB_MODES} ('offline' never contacts a server)",
    ),
    Rule("wandb.project", lambda v: isinstance(v, str), "must be a string, got {value!r}"),
    Rule("wandb.entity", lambda v: isinstance(v, str), "must be a string, got {value!r}"),
    Rule(
        "wandb.project",
        lambda v: bool(v.strip()) and "/" not in v,
        "must be a non-empty name without '/', got {value!r}",
    ),
    Rule("diagnostics.open_loop_every", _non_negative, "must be >= 0 (0: off)"),
    _replay_holds_a_sequence_per_env,
    _batch_fits_in_replay,
    Rule("replay_terminal_fraction", _below_one, "must lie in [0, 1), got {value}", default=0.0),
    Rule(
        "replay_terminal_fraction",
        lambda v: v == 0.0,
        "is drawn by the host loop's replay: set it to 0 with --config.loop=device",
        default=0.0,
        when=lambda c: c.loop == "device",
    ),
    Rule("reward_scale", _positive, "must be > 0"),
    Rule(
        "checkpoint_seconds",
        _finite_non_negative,
        "must be a finite number of seconds >= 0 (0: checkpoint by steps only), got {value}",
        default=0.0,
    ),
    Rule("world_model.termination_weight", _positive, "must be > 0"),
    *(
        rule
        for group in OPTIMISERS
        for rule in (
            Rule(f"{group}.lr", _finite_non_negative, "must be a finite number >= 0, got {value}"),
            Rule(
                f"{group}.lr_final_scale", _unit, "must lie in [0, 1] (1: constant lr), got {value}"
            ),
            Rule(
                f"{group}.grad_clip",
                _positive,
                "must be > 0 (use a large value such as 1e6 to disable), got {value}",
            ),
        )
    ),
    Rule("imagination.gamma", _unit, "must lie in [0, 1]"),
    Rule("imagination.lambda_", _unit, "must lie in [0, 1]"),
    Rule("critic.target_update_rate", lambda v: 0.0 < v <= 1.0, "must lie in (0, 1]"),
    Rule(
        "critic.bins",
        lambda v: v == 0 or v >= 2,
        "must be 0 (scalar critic) or >= 2 bins, got {value}",
    ),
    Rule("critic.slow_reg", _non_negative, "must be >= 0 (0: off)", default=0.0),
    Rule("schedule.final_real_mix", _unit, "must lie in [0, 1]"),
    Rule("actor.entropy_coef", _non_negative, "must be >= 0"),
    Rule("actor.return_norm_decay", _below_one, "must lie in [0, 1)"),
    Rule("actor.unimix", _below_one, "must lie in [0, 1)"),
    Rule("actor.explore_correlation", _below_one, "must lie in [0, 1)"),
    Rule(
        "actor.explore_correlation_steps",
        _non_negative_int,
        "must be an integer >= 0 (0: the whole run), got {value!r}",
        default=0,
    ),
    _an_env_explores,
    _actor_std_range,
    Rule("imagination.num_starts", _non_negative, "must be >= 0"),
    *(
        Rule(f"world_model.{name}_scale", _non_negative, "must be >= 0")
        for name in ("dynamics", "reward", "continue", "decoder", "representation", "multi_step")
    ),
    Rule("schedule.warmup_steps", _non_negative, "must be >= 0"),
    _transition_after_warmup,
    *(
        Rule(f"schedule.{name}", _non_negative, "must be >= 0")
        for name in (
            "wm_updates",
            "actor_updates",
            "critic_updates",
            "early_wm_updates",
            "late_actor_updates",
            "late_critic_updates",
        )
    ),
    Rule("offline.updates", _positive_int, POSITIVE_INT),
    *(
        Rule(f"offline.{name}", _non_negative_int, "must be an integer >= 0, got {value!r}", 0)
        for name in (
            "world_model_only_updates",
            "transition_updates",
            "log_every",
            "checkpoint_every",
            "open_loop_every",
            "eval_every",
            "eval_video_every",
        )
    ),
)


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raises :class:`ConfigError` naming the first impossible value; returns ``c``."""
    for rule in RULES:
        rule(c)
    return c


def validate_for_env(c: ml_collections.ConfigDict, max_episode_steps: int | None) -> None:
    """The checks that need the environment: windows longer than any episode can be."""
    if max_episode_steps is None:
        return
    _require(
        not c.sequence_mode or c.sequence_length <= max_episode_steps,
        "sequence_length",
        f"{c.sequence_length} is longer than {c.env_id}'s episodes can be (max_episode_steps="
        f"{max_episode_steps}), so no sampled sequence could be full: use at most "
        f"{max_episode_steps}, or raise the limit with --env_kwargs='{{\"max_episode_steps\": N}}'",
    )
    d = c.diagnostics
    _require(
        not d.open_loop_every or d.open_loop_horizon <= max_episode_steps,
        "diagnostics.open_loop_horizon",
        f"{d.open_loop_horizon} is longer than {c.env_id}'s episodes can be (max_episode_steps="
        f"{max_episode_steps}): use at most {max_episode_steps}, or "
        "--config.diagnostics.open_loop_every=0 to turn the open-loop check off",
    )
