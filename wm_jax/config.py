"""All defaults in one place, grouped by the loops that read them; the checks of a config are
:mod:`wm_jax.config_rules` (re-exported here).

Defaults follow the seeds: features 256, states 64, hidden 256, H = 15, γ = 0.99, λ = 0.95,
Adam with lrs 1e-4 / 3e-5 / 3e-5 and ``clip_by_global_norm(1.0)``, entropy coefficient 0.01,
warmup 5k env steps, transition to 10k, early/late multi-update boundary at 50k.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from wm_jax.config_rules import (  # noqa: F401  (re-exported: the config's public interface)
    ConfigError,
    parse_lr_sweep,
    validate,
    validate_for_env,
)
from wm_jax.diagnostics import Thresholds


def get_config() -> ml_collections.ConfigDict:
    """The default configuration (the seeds' values), as an ``ml_collections.ConfigDict``; the
    ``--config.x=y`` flags and experiment files in ``experiments/configs/`` start from it.
    Each section's header says which loops read it (``config.loop``, and ``wm_jax.offline``)."""
    c = ml_collections.ConfigDict()

    # --- every loop: the experiment ---
    # any gymnasium id, "module:EnvId" (imports module), or "gymnax:<name>"
    c.env_id = "CartPole-v1"
    # keyword arguments of gymnasium.make (or gymnax); "pixels": observe renders
    c.env_kwargs = ml_collections.ConfigDict()
    c.seed = 0  # seeds parameters, envs, replay sampling and acting
    # "host": gymnasium envs stepped by Python, replay in numpy (any env).  "device": the whole
    # loop compiled into one program (wm_jax.device_loop; gymnax envs only, "gymnax:<name>").
    c.loop = "host"
    # Comma-separated modules imported before the networks are built; importing them registers
    # your own components (docs/custom_dynamics.md), e.g. "experiments.custom_dynamics".
    c.imports = ""
    # Matmuls of the update's MLPs: "float32" | "bfloat16" (bf16 inputs, f32 accumulation; params,
    # losses, optimiser states and metrics stay f32) | "auto" (bfloat16 where the hardware
    # multiplies bf16 natively: TPU, GPU from Ampere, CPU with AMX/AVX512-BF16).  Acting and
    # evaluation always run f32.
    c.precision = "auto"

    # --- every loop: batches, observations, rewards ---
    c.batch_size = 64  # transitions (flat) or sequences (sequence_mode) per train step
    # train on replayed sequences (enables the multi-step loss) instead of flat transitions
    c.sequence_mode = False
    c.sequence_length = 16  # steps per replayed sequence
    c.obs_norm = True  # running mean/std normalisation of float observations
    c.reward_scale = 1.0  # rewards are multiplied by this before training

    # --- every loop: evaluation, checkpoints, the non-finite stop, the report ---
    c.eval_episodes = 5  # deterministic-policy episodes per evaluation
    # Also checkpoint once this many seconds of training passed since the last save, so a crash
    # loses at most about this much time (0: steps only; one-process runs).
    c.checkpoint_seconds = 120.0
    c.keep_checkpoints = 3  # newest checkpoints kept on disk
    # Non-finite losses/gradients skip that optimiser's update; this many in a row stop the run.
    c.max_nonfinite_updates = 100
    c.report = True  # write report plots at the end of a run

    # --- every loop: Weights & Biases (optional: pip install -e .[wandb]) ---
    # The same rows, images and videos as TensorBoard, the resolved config as the W&B config;
    # run name = the workdir's name, its W&B run id kept in <workdir>/wandb_run.json (resume).
    wb = c.wandb = ml_collections.ConfigDict()
    wb.enabled = False  # also log to W&B
    wb.project = "wm_jax"  # W&B project
    wb.entity = ""  # W&B entity (user or team); "" is your default entity
    # "offline": files in <workdir>/wandb/ only, never a network call (`wandb sync` uploads
    # them later) | "online": stream to the W&B server (needs `wandb login`)
    wb.mode = "offline"

    # --- every loop: components (chosen by name: see wm_jax.networks registries) ---
    m = c.model = ml_collections.ConfigDict()
    m.encoder = "auto"  # "mlp" | "cnn" | "auto" (cnn for rank-3 observations)
    m.representation = "autoencoder"  # "autoencoder" | "vae"
    m.dynamics = "mlp"  # "mlp" | "ensemble" | "transformer" | "rssm"
    m.decoder = "auto"  # "mlp" | "cnn" | "auto"
    m.feature_dim = 256  # encoder output width
    m.state_dim = 64  # latent state width (autoencoder/VAE representation)
    m.hidden_dim = 256  # hidden width of every MLP (and the attention width of the transformer)
    m.hidden_layers = 2  # hidden layers of every MLP
    m.activation = "elu"  # activation of every MLP (any jax.nn function name)
    m.layer_norm = True  # normalise after each hidden layer (the seeds have none)
    # Which normalisation MLP hidden layers use when layer_norm is on: "layer" (LayerNorm) |
    # "rms" (RMSNorm: no centring; learned CartPole as LayerNorm did but measured no faster on
    # CPU, BUILD_NOTES "Speed (issue 18), 2026-12-05").  CNN layers always use LayerNorm.
    m.norm = "layer"
    m.state_norm = "layernorm"  # autoencoder states: "layernorm" | "tanh" | "none"
    m.cnn_depth = 32  # channels of the first conv layer of the CNN encoder/decoder
    # Conv layers of the CNN encoder/decoder (channels cnn_depth·2^i); stride 2 only while the
    # map is larger than 6 pixels, so small boards (Catch 10×5, MinAtar 10×10) want 2-3.
    m.cnn_layers = 4
    m.dynamics_residual = True  # the dynamics model predicts s_{t+1} - s_t
    m.dynamics_std = "learned"  # "learned" | "fixed"
    m.dynamics_fixed_std = 1.0  # σ of the dynamics model with dynamics_std="fixed"
    # The reward predictor's σ: "learned" (the seeds') | "fixed" (reward_fixed_std; Loss 2 is
    # then a squared error, robust to sparse rewards).
    m.reward_std = "learned"
    m.reward_fixed_std = 1.0  # σ of the reward predictor with reward_std="fixed"
    m.ensemble_size = 5  # members of the "ensemble" dynamics model
    # Transformer dynamics: causal self-attention of width hidden_dim over the last
    # context_length (state, action) pairs (a banded mask: sequences may be longer).
    m.context_length = 16
    m.transformer_layers = 2  # attention blocks of the transformer dynamics
    m.transformer_heads = 4  # attention heads (must divide hidden_dim)
    # RSSM (model.representation = model.dynamics = "rssm"): recurrent h of rssm_deter units,
    # z = rssm_stoch one-hot categoricals of rssm_classes classes (DreamerV3: 32 x 32).
    m.rssm_deter = 256
    m.rssm_stoch = 16  # categorical variables of the RSSM latent z
    m.rssm_classes = 16  # classes per RSSM categorical
    m.rssm_unimix = 0.01  # uniform mixture in the RSSM categoricals (DreamerV3: 1%)

    # --- every loop: world-model losses (seeds Losses 1-5) ---
    wm = c.world_model = ml_collections.ConfigDict()
    wm.lr = 1e-4  # Adam learning rate of the world-model optimiser
    wm.eps = 1e-8  # Adam's ε
    wm.grad_clip = 1.0  # max norm of the world model gradient (see grad_clip_mode)
    # "global": one clip_by_global_norm for the whole gradient (the seeds) | "per_module": each
    # module's gradient clipped to grad_clip by its own norm | "adaptive": optax.adaptive_grad_clip,
    # each unit's gradient at most grad_clip x its parameters' norm (DreamerV3: 0.3)
    wm.grad_clip_mode = "global"
    # Linear learning-rate anneal to lr·lr_final_scale over the run's expected updates of this
    # optimiser (1.0: constant, the seeds); PPO-style annealing steadies late policy updates.
    wm.lr_final_scale = 1.0
    wm.dynamics_loss = "mse"  # "mse" (seeds Loss 1) | "nll" (seeds Interface 2)
    wm.dynamics_target_grad = False  # let the dynamics loss pull on the target state's encoder
    wm.dynamics_scale = 1.0  # weight of the dynamics loss (Loss 1)
    wm.reward_scale = 1.0  # weight of the reward loss (Loss 2)
    wm.continue_scale = 1.0  # weight of the continue loss (Loss 3)
    wm.termination_weight = 1.0  # BCE weight of c = 0 samples (class imbalance); seeds: 1
    wm.decoder_scale = 1.0  # weight of the decoder loss (Loss 4)
    wm.representation_scale = 1.0  # the representation learner's own loss
    wm.vae_beta = 1.0  # KL weight of the "vae" representation
    wm.multi_step_scale = 1.0  # sequence mode only (seeds Loss 5); 0 turns it off
    # RSSM dynamics loss: α·KL(sg(q) || p) + (1 - α)·KL(q || sg(p)), each KL clipped below at
    # kl_free_bits nats (DreamerV2's balancing, DreamerV3's free bits).
    wm.kl_balance = 0.8
    wm.kl_free_bits = 1.0  # nats below which each RSSM KL term is not penalised

    # --- every loop: imagination and returns ---
    im = c.imagination = ml_collections.ConfigDict()
    im.horizon = 15  # imagined steps per rollout (H)
    im.gamma = 0.99  # discount γ
    im.lambda_ = 0.95  # λ of the λ-returns
    im.sample_dynamics = False  # imagine with the next-state mean (False) or a sample (True)
    im.num_starts = 0  # start states per batch; 0 uses every real state in the batch
    # Imagined c_t: "probs" (seeds) | "mode" (1 if P(continue) > 0.5) | "calibrated" (P(continue)
    # with world_model.termination_weight's shift of the logit undone).
    im.continue_mode = "probs"
    im.unroll = 1  # lax.scan unroll of the rollout (a speed knob; the maths is the same)

    # --- every loop: actor (policy head) ---
    a = c.actor = ml_collections.ConfigDict()
    a.lr = 3e-5  # Adam learning rate of the actor
    a.eps = 1e-8  # Adam's ε
    a.grad_clip = 1.0  # max norm of the actor gradient (see grad_clip_mode)
    a.grad_clip_mode = "global"  # as world_model.grad_clip_mode
    a.lr_final_scale = 1.0  # as world_model.lr_final_scale
    a.entropy_coef = 0.01  # weight of the policy entropy bonus
    a.gradient = "dynamics"  # "dynamics" (reparameterised / straight-through) | "reinforce"
    a.return_norm = False  # divide returns by max(1, P95 - P5) (DreamerV3); seeds: off
    a.return_norm_decay = 0.0  # 0: percentiles of each batch; 0.99: an EMA over batches (DreamerV3)
    # REINFORCE: subtract the batch's mean advantage (a lagging critic's common offset); seeds: off
    a.center_advantages = False
    a.discount_weights = False  # weight imagined steps by Π γ·c (Dreamer); seeds: plain mean
    a.unimix = 0.0  # uniform mixture in discrete policies (DreamerV3: 0.01)
    # ρ of the exploration noise from one env step to the next (wm_jax.policy): each action is
    # still a sample of the policy, but consecutive ones are correlated over ~1/(1-ρ) steps;
    # 0: independent samples (the seeds).
    a.explore_correlation = 0.0
    # env steps the correlation lasts (the random prefill and the policy's samples before it);
    # 0: the whole run.
    a.explore_correlation_steps = 0
    # envs (the first k of each process's) that act with the policy's mode instead of a sample
    # once the policy acts (Ape-X's per-actor exploration levels): their episodes are the ones
    # the deterministic evaluation plays; 0: every env samples (the seeds).
    a.greedy_envs = 0
    a.min_std = 0.1  # lower bound of a continuous policy's σ
    a.max_std = 1.0  # upper bound of a continuous policy's σ

    # --- every loop: critic (value function) ---
    cr = c.critic = ml_collections.ConfigDict()
    cr.lr = 3e-5  # Adam learning rate of the critic
    cr.eps = 1e-8  # Adam's ε
    cr.grad_clip = 1.0  # max norm of the critic gradient (see grad_clip_mode)
    cr.grad_clip_mode = "global"  # as world_model.grad_clip_mode
    cr.lr_final_scale = 1.0  # as world_model.lr_final_scale
    # τ of the target critic, θ' <- (1 - τ)·θ' + τ·θ after each critic update; 1.0 bootstraps
    # from the online critic itself (the seeds); ~0.02 gives the usual slow target network.
    cr.target_update_rate = 1.0
    # 0: regress V directly with MSE (the seeds); > 0: DreamerV3's distributional critic, a
    # softmax over this many symlog-spaced bins trained on two-hot targets (255 in DreamerV3).
    cr.bins = 0
    # Where the critic's imagined λ-return targets bootstrap: "target" (the target critic, τ
    # above) or "online" (the critic being trained, DreamerV3's default: no lag of its own).
    cr.bootstrap = "target"
    # DreamerV3's slow-critic regulariser: L_V += slow_reg·mean (V(s) − V_target(s))² on the
    # imagined states (two-hot NLL for a distributional critic); 0 (the seeds) turns it off.
    # DreamerV3 pairs slow_reg = 1 with bootstrap = "online" and τ = 0.02.
    cr.slow_reg = 0.0
    # Real-data targets (schedule.final_real_mix): "lambda" (λ-returns along each replayed
    # window, bootstrapped at its end) or "episode" (for steps of an episode that has since
    # terminated, its discounted return to that termination, however far beyond the window;
    # λ-returns elsewhere).  Every loop keeps them in its replay.
    cr.real_targets = "lambda"

    # --- every loop: schedule (seeds Diagram 5; offline runs: warmup/transition from offline.*) ---
    s = c.schedule = ml_collections.ConfigDict()
    s.warmup_steps = 5_000  # world model only
    s.transition_steps = 10_000  # critic_real_mix anneals 1 -> final_real_mix by here
    s.final_real_mix = 0.0  # weight of real-data critic targets after the transition (seeds: 0)
    s.wm_updates = 1  # world-model updates per train step
    s.actor_updates = 1  # actor updates per train step (after warmup)
    s.critic_updates = 1  # critic updates per train step (after warmup)
    s.multi_update = False  # the seeds' optional early/late schedule
    s.early_late_boundary = 50_000  # multi_update: env step where "early" ends
    s.early_wm_updates = 2  # multi_update: world-model updates per step early on
    s.late_actor_updates = 2  # multi_update: actor updates per step later
    s.late_critic_updates = 2  # multi_update: critic updates per step later

    # --- every loop: diagnostics (wm_jax.open_loop, wm_jax.diagnostics) ---
    d = c.diagnostics = ml_collections.ConfigDict()
    # env steps between open-loop prediction checks (offline: offline.open_loop_every); 0 disables
    d.open_loop_every = 5_000
    d.open_loop_horizon = 50  # steps each open-loop check predicts without observations
    d.open_loop_batch = 16  # replayed windows per check
    # Failure-mode detector thresholds (see wm_jax/diagnostics.py for what each one means).
    for name, value in dataclasses.asdict(Thresholds()).items():
        d[name] = value

    # --- host and device loops: the run counted in env steps ---
    c.num_envs = 4  # envs stepped together (a vector step is num_envs env steps)
    c.total_env_steps = 30_000  # length of the run in env steps (may grow on resume)
    # Split each batch (host loop) or the seeds (device loop) over all devices with
    # jax.sharding; parameters are replicated and XLA inserts the gradient all-reduce.
    c.data_parallel = False
    c.replay_capacity = 100_000  # transitions kept (oldest overwritten), split evenly over the envs
    # Share of each replayed batch drawn around stored terminations (windows that hold one at a
    # uniform place; flat mode: terminal transitions), the rest uniform; host loop only.  0: all
    # uniform (the seeds).  Rare failures (a cart leaving the track) stay in the model's batches.
    c.replay_terminal_fraction = 0.0
    c.prefill_steps = 1_000  # env steps of uniformly random actions before training starts
    c.train_ratio = 0.25  # train steps per env step (0.25 with 4 envs: one per vector step)
    c.eval_every = 2_500  # env steps; 0 disables periodic evaluation
    # env steps between evaluation videos: the first evaluation after each multiple replays its
    # first episode rendered (rgb_array envs; <= 100 frames) as eval/episode in TensorBoard and
    # W&B; 0 disables
    c.eval_video_every = 10_000
    c.log_every = 1_000  # env steps
    c.checkpoint_every = 5_000  # env steps; 0 disables checkpoints

    # --- host loop (wm_jax.trainer) and offline evaluation: gymnasium envs ---
    # "sync" | "async": envs in worker processes (forked; spawned for gymnasium's JAX envs);
    # exact resume needs "sync"; host loop only
    c.vector_mode = "sync"
    # NaN/Inf or out-of-range observations/rewards from the env: "raise" | "sanitize" | "off"
    # (wm_jax.env_guard); |reward| above max_abs_reward counts as out of range.
    c.env_check = "raise"
    c.max_abs_reward = 1e6  # |reward| above this is invalid env data (see env_check)

    # --- device loop only (wm_jax.device_loop) ---
    c.num_seeds = 1  # device loop: seeds seed, seed+1, ... trained at once with jax.vmap
    # Device loop: "<group>=v1,v2,...", e.g. "actor=1e-4,3e-4": one vmapped run per seed and
    # learning rate of that optimiser (world_model | actor | critic) in the same program.
    c.lr_sweep = ""

    # --- offline loop only (wm_jax.offline): training from a fixed dataset, in updates ---
    o = c.offline = ml_collections.ConfigDict()
    o.updates = 10_000  # train steps (one batch each) of an offline run
    o.world_model_only_updates = 2_000  # the schedule's warmup: world model only
    o.transition_updates = 2_000  # then critic_real_mix anneals 1 -> schedule.final_real_mix
    o.train_world_model = True  # keep training the world model with actor and critic afterwards
    # Imagination-only fine-tuning: start from the dataset run's checkpoint and never update its
    # world model (needs a run: dataset; world_model_only_updates is then skipped).
    o.freeze_world_model = False
    o.log_every = 100  # updates
    o.checkpoint_every = 1_000  # updates; a final checkpoint is always written
    o.open_loop_every = 1_000  # updates between open-loop checks; 0 disables
    # updates between evaluations in the dataset's env (eval_episodes episodes; only when the
    # dataset names an env that can be made); 0 disables
    o.eval_every = 1_000
    o.eval_video_every = 5_000  # updates between evaluation videos (see eval_video_every); 0: off
    return c


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of an experiment file loaded by path, e.g. to build one config on
    another: config files are read by path (``--config=experiments/configs/x.py``), not
    imported as a package, so this works from any working directory."""
    import importlib.util

    name = "_wm_jax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load a config file from {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def override(c: ml_collections.ConfigDict, **dotted) -> ml_collections.ConfigDict:
    """Sets fields by dotted path, ``override(c, **{"actor.lr": 1e-4})``, the Python twin of
    ``--config.actor.lr=1e-4``; returns ``c``."""
    for path, value in dotted.items():
        node = c
        *parents, leaf = path.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return c


def _field_paths(tree, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        # env_kwargs holds the env's own keyword arguments: any name goes.
        if isinstance(value, ml_collections.ConfigDict) and path != "env_kwargs":
            paths |= _field_paths(value, path)
        else:
            paths.add(path)
    return paths


def check_known_fields(c: ml_collections.ConfigDict) -> None:
    """Raises :class:`ConfigError` for a field that :func:`get_config` does not have (a typo in
    a config file or in Python, ``c.actor.lrr = ...``), naming the closest field.  Training
    entry points call it; loading a saved run does not (a run may predate a field's removal)."""
    import difflib

    known = _field_paths(get_config())
    unknown = sorted(_field_paths(c) - known)
    if unknown:
        field = unknown[0]
        close = difflib.get_close_matches(field, sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"config.{field}: not a config field{hint} (docs/config.md lists every field; "
            f"unknown: {', '.join(unknown)})"
        )


def check_wandb_installed(c: ml_collections.ConfigDict) -> None:
    """Raises :class:`ConfigError` when ``config.wandb.enabled`` but wandb is not installed:
    training entry points call it at start-up (loading a saved run does not need wandb)."""
    import importlib.util

    w = c.get("wandb")
    if w is not None and w.enabled and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "config.wandb.enabled: wandb is not installed: pip install -e .[wandb] (or pip "
            "install wandb), or set config.wandb.enabled=False"
        )
