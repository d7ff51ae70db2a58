"""A trained agent for acting: load it from a run's workdir or an exported bundle, and act.

    policy = wm_jax.load_policy("runs/cartpole")          # newest checkpoint, no replay/optimiser
    action = policy.act(obs)                              # one observation -> one env action
    actions = policy.act(batch_of_obs, key, deterministic=False)

Only what acting needs is read: the world model's and policy head's parameters and the
observation normaliser (a partial orbax restore: the replay buffer and optimiser states of the
checkpoint are never loaded).  :func:`export_policy` writes the same three things plus the config
and the env's spaces into a self-contained directory that loads on a machine without the workdir
or the environment's package.  Nothing is pickled: arrays go through orbax, the rest is JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from wm_jax.env_spec import EnvSpec, to_env_action
from wm_jax.normalizer import RunningMeanStd
from wm_jax.safe_load import check_env_id, check_imports, normalize_allowed

BUNDLE_FORMAT = "wm_jax.policy/1"


def spec_to_json(spec: EnvSpec) -> dict[str, Any]:
    return {
        "obs_shape": list(spec.obs_shape),
        "obs_dtype": np.dtype(spec.obs_dtype).name,
        "action_dim": spec.action_dim,
        "discrete": spec.discrete,
        "action_low": None if spec.action_low is None else np.asarray(spec.action_low).tolist(),
        "action_high": None if spec.action_high is None else np.asarray(spec.action_high).tolist(),
        "action_start": spec.action_start,
        "max_episode_steps": spec.max_episode_steps,
    }


def spec_from_json(d: dict[str, Any]) -> EnvSpec:
    bound = lambda v: None if v is None else np.asarray(v, np.float32)  # noqa: E731
    return EnvSpec(
        obs_shape=tuple(d["obs_shape"]),
        obs_dtype=np.dtype(d["obs_dtype"]),
        action_dim=int(d["action_dim"]),
        discrete=bool(d["discrete"]),
        action_low=bound(d["action_low"]),
        action_high=bound(d["action_high"]),
        action_start=int(d["action_start"]),
        max_episode_steps=d.get("max_episode_steps"),
    )


@dataclasses.dataclass
class Policy:
    """A trained agent's acting half: ``act(obs) -> env action``, jitted, normaliser applied."""

    config: ml_collections.ConfigDict
    spec: EnvSpec
    wm_params: Any
    actor_params: Any
    obs_mean: np.ndarray
    obs_std: np.ndarray
    step: int | None = None
    # Modules the loader's caller allowed to be imported (see wm_jax.safe_load): evaluation
    # makes the env of config.env_id only if its module is one of them or already imported.
    allow_imports: frozenset[str] = frozenset()

    def __post_init__(self):
        from wm_jax.policy import make_act_fn
        from wm_jax.update import make_agent

        self.agent = make_agent(self.config, self.spec)
        self._act = make_act_fn(self.agent)
        self._carry = None

    def reset(self) -> None:
        """Starts new episodes: the next call reads its observations without a past.  Call it
        between episodes; it matters for recurrent world models (the RSSM), whose policy
        remembers the previous steps, and is free for the others."""
        self._carry = None

    def agent_actions(self, obs, key=None, deterministic: bool = True) -> np.ndarray:
        """The agent's float actions ``[N, A]`` (one-hot / ``[-1, 1]``) for ``obs [N, ...]``."""
        if key is None:
            if not deterministic:
                raise ValueError("pass key=jax.random.key(...) for stochastic actions")
            key = jax.random.PRNGKey(0)  # unused by the deterministic policy
        obs = np.asarray(obs)
        if self._carry is None or self._carry.state.shape[0] != obs.shape[0]:
            self._carry = self._act.initial_carry(obs.shape[0])
        actions, self._carry = self._act(
            self.wm_params,
            self.actor_params,
            self._carry,
            obs,
            self.obs_mean,
            self.obs_std,
            key,
            deterministic=deterministic,
        )
        return np.asarray(actions)

    def act(self, obs, key=None, deterministic: bool = True) -> np.ndarray:
        """Environment actions for one observation (shape ``obs_shape``) or a batch
        (``[N, *obs_shape]``): ints for a ``Discrete`` space, floats in the ``Box`` bounds."""
        obs = np.asarray(obs, self.spec.obs_dtype)
        single = obs.shape == self.spec.obs_shape
        if not single and obs.shape[1:] != self.spec.obs_shape:
            raise ValueError(
                f"expected an observation of shape {self.spec.obs_shape} or a batch "
                f"[N, {', '.join(map(str, self.spec.obs_shape))}], got {obs.shape}: the "
                "observations of wm_jax.envs.make_env(env_id), which flattens Discrete, Tuple "
                "and Dict spaces to float vectors as training did"
            )
        batch = obs[None] if single else obs
        actions = to_env_action(self.agent_actions(batch, key, deterministic), self.spec)
        return actions[0] if single else actions

    def env_id_to_make(self, env_id: str | None = None) -> str:
        """``env_id`` if the caller gave one (their choice), else the run's own id once its
        ``module:`` part (if any) is allowed: making it would import that module."""
        if env_id:
            return env_id
        check_env_id(self.config.env_id, self.allow_imports, "the loaded policy's env_id")
        return self.config.env_id


def _abstract(metadata) -> Any:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata
    )


def _partial(item) -> ocp.args.PyTreeRestore:
    """Restore only ``item``'s leaves of a saved tree, onto this process's default device."""
    return ocp.args.PyTreeRestore(
        item=item,
        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True,
    )


def _read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


BEST_DIR = "best"  # a run's best agent by evaluation return, as a bundle inside its workdir


def load_policy(
    path: str,
    step: int | None = None,
    allow_imports: str | list[str] | None = None,
    which: str = "last",
) -> Policy:
    """Loads a :class:`Policy` from a run's workdir (its newest checkpoint, or ``step``; with
    ``which="best"`` the agent of its best evaluation, kept in ``<workdir>/best``) or from a
    directory written by :func:`export_policy`.

    Nothing named in the loaded files is imported unless ``allow_imports`` names it (a list or
    ``"a,b"``): modules in the run's ``config.imports`` (custom components) and, when the policy
    is evaluated in its own env, the ``module:`` of a ``module:EnvId`` env id.

    Raises:
        wm_jax.safe_load.UntrustedImportError: The files name a module not allowed.
    """
    path = os.path.abspath(path)
    allowed = normalize_allowed(allow_imports)
    if which not in ("last", "best"):
        raise ValueError(f"which must be 'last' or 'best', got {which!r}")
    if which == "best":
        if step is not None:
            raise ValueError("step= picks a checkpoint of the last timeline; not with which='best'")
        best = os.path.join(path, BEST_DIR)
        if not os.path.exists(os.path.join(best, "policy.json")):
            raise FileNotFoundError(
                f"{path} has no best agent yet ({BEST_DIR}/ is written at the first evaluation; "
                "config.eval_every > 0)"
            )
        path = best
    if os.path.exists(os.path.join(path, "policy.json")):
        meta = _read_json(os.path.join(path, "policy.json"))
        if meta.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path}/policy.json is not a {BUNDLE_FORMAT} bundle")
        check_imports(meta["config"], allowed, f"{path}/policy.json")
        checkpointer = ocp.StandardCheckpointer()
        arrays_dir = os.path.join(path, "arrays")
        arrays = checkpointer.restore(
            arrays_dir, _abstract(checkpointer.metadata(arrays_dir).item_metadata)
        )
        return Policy(
            config=ml_collections.ConfigDict(meta["config"]),
            spec=spec_from_json(meta["spec"]),
            wm_params=arrays["wm_params"],
            actor_params=arrays["actor_params"],
            obs_mean=np.asarray(arrays["obs_mean"]),
            obs_std=np.asarray(arrays["obs_std"]),
            step=meta.get("step"),
            allow_imports=allowed,
        )
    for name in ("config.json", "env_spec.json", "checkpoints"):
        if not os.path.exists(os.path.join(path, name)):
            raise FileNotFoundError(
                f"{path} is neither an exported policy (policy.json) nor a wm_jax run directory "
                f"with a checkpoint ({name} is missing)"
            )
    raw_config = _read_json(os.path.join(path, "config.json"))
    check_imports(raw_config, allowed, f"{path}/config.json")
    config = ml_collections.ConfigDict(raw_config)
    spec = spec_from_json(_read_json(os.path.join(path, "env_spec.json")))
    manager = ocp.CheckpointManager(
        os.path.join(path, "checkpoints"),
        item_handlers={
            "state": ocp.PyTreeCheckpointHandler(),
            "extras": ocp.PyTreeCheckpointHandler(),
        },
    )
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {path}/checkpoints")
        if step not in manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint at step {step} in {path}/checkpoints; it has steps "
                f"{sorted(manager.all_steps())}"
            )
        meta = manager.item_metadata(step)
        wanted_state = {k: _abstract(meta["state"][k]) for k in ("wm_params", "actor_params")}
        wanted_extras = {"normalizer": _abstract(meta["extras"]["normalizer"])}
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=_partial(wanted_state),
                extras=_partial(wanted_extras),
            ),
        )
    finally:
        manager.close()
    normalizer = RunningMeanStd(
        spec.obs_shape,
        enabled=config.obs_norm and not np.issubdtype(spec.obs_dtype, np.integer),
    )
    normalizer.load_state_dict(jax.tree.map(np.asarray, restored["extras"]["normalizer"]))
    mean, std = normalizer.stats()
    return Policy(
        config=config,
        spec=spec,
        wm_params=restored["state"]["wm_params"],
        actor_params=restored["state"]["actor_params"],
        obs_mean=mean,
        obs_std=std,
        step=int(step),
        allow_imports=allowed,
    )


def write_bundle(
    out_dir: str,
    config,
    spec: EnvSpec,
    wm_params,
    actor_params,
    obs_mean,
    obs_std,
    step: int | None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Writes a policy bundle (``policy.json`` + ``arrays/``) to the new directory ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    arrays = {
        "wm_params": wm_params,
        "actor_params": actor_params,
        "obs_mean": np.asarray(obs_mean),
        "obs_std": np.asarray(obs_std),
    }
    options = {}
    if jax.process_count() > 1:  # one process writes it (the run's lead): no global barrier
        me = jax.process_index()
        options["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}
        )
    checkpointer = ocp.StandardCheckpointer(**options)
    checkpointer.save(os.path.join(out_dir, "arrays"), jax.device_get(arrays))
    checkpointer.wait_until_finished()
    meta = {
        "format": BUNDLE_FORMAT,
        "step": step,
        "config": json.loads(config.to_json_best_effort()),
        "spec": spec_to_json(spec),
        **(extra or {}),
    }
    with open(os.path.join(out_dir, "policy.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return out_dir


def replace_bundle(out_dir: str, **bundle) -> str:
    """:func:`write_bundle` to ``out_dir`` replacing what is there, atomically: the new bundle is
    written beside it and renamed into place, so a crash leaves the old one or the new one."""
    out_dir = os.path.abspath(out_dir)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    old = f"{out_dir}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_bundle(tmp, **bundle)
    if os.path.exists(out_dir):
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def best_return(workdir: str) -> float:
    """The evaluation return of the agent kept in ``<workdir>/best`` (-inf when there is none),
    so a resumed run keeps beating its real best."""
    meta = read_bundle_meta(os.path.join(workdir, BEST_DIR))
    return -np.inf if meta is None else float(meta.get("eval_return", -np.inf))


def keep_if_best(
    workdir: str, best: float, mean: float, std: float, episodes: int, bundle
) -> float:
    """Replaces ``<workdir>/best`` (``load_policy(workdir, which="best")``) with the evaluated
    agent when its return ``mean`` beats ``best``; ``bundle()`` gives :func:`write_bundle`'s
    arguments (called only then).  Returns the best return after this evaluation."""
    if not mean > best:
        return best
    replace_bundle(
        os.path.join(workdir, BEST_DIR),
        **bundle(),
        extra={"eval_return": mean, "eval_return_std": std, "eval_episodes": int(episodes)},
    )
    return mean


def read_bundle_meta(path: str) -> dict[str, Any] | None:
    """The ``policy.json`` of a bundle directory, or None if there is none (or it is damaged)."""
    try:
        return _read_json(os.path.join(path, "policy.json"))
    except (OSError, ValueError):
        return None


def export_policy(policy_or_path: Policy | str, out_dir: str, step: int | None = None) -> str:
    """Writes a self-contained inference bundle (``policy.json`` + ``arrays/``) to ``out_dir``
    from a :class:`Policy` or a run's workdir; returns ``out_dir``."""
    policy = (
        policy_or_path if isinstance(policy_or_path, Policy) else load_policy(policy_or_path, step)
    )
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(os.path.join(out_dir, "policy.json")):
        raise FileExistsError(f"{out_dir} already holds a policy bundle")
    return write_bundle(
        out_dir,
        config=policy.config,
        spec=policy.spec,
        wm_params=policy.wm_params,
        actor_params=policy.actor_params,
        obs_mean=policy.obs_mean,
        obs_std=policy.obs_std,
        step=policy.step,
    )
