"""A run's workdir, as every loop (host, device, offline) opens it: one run per workdir, resume
checked before anything is written, logs that follow the checkpoints.

    run_dir = RunDir.open(workdir, config, spec_json)   # lock + resume check; nothing written
    run_dir.write_run_files(config, spec_json)          # config.json, env_spec.json (atomic)
    ...restore the newest checkpoint (step S, or None)...
    run_dir.continue_logs(S)                            # drop log rows after S; TB purge step
    run_dir.close()                                     # releases the lock

* **Lock**: ``flock`` on ``<workdir>/.lock`` (``.lock.process_<i>`` for process ``i > 0`` of a
  multi-process run), taken before anything else is written.  The kernel drops it when the holder
  exits, even by ``kill -9``, so a lock is never stale.  A second run exits at once with
  :class:`WorkdirLockedError` naming the holder (pid, host, since when).
* **Resume check**: when the workdir holds a checkpoint, the stored ``config.json`` and
  ``env_spec.json`` are compared with the new ones before any file is touched; fields outside
  :data:`RESUMABLE` that differ raise :class:`ResumeRefusedError` listing every one of them, and
  the workdir stays byte-identical.
* **Logs follow checkpoints**: rows of ``metrics.jsonl`` and ``open_loop.jsonl`` after the
  restored step belong to a timeline that was lost; they are dropped (the file is rewritten
  atomically), damaged lines are skipped with a warning, and TensorBoard gets the restored step
  as its purge step, so every step appears once.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
import tempfile
from typing import Any

from absl import logging

from wm_jax.config import ConfigError
from wm_jax.errors import WorkdirError, workdir_error

LOCK_NAME = ".lock"
LOG_FILES = ("metrics.jsonl", "open_loop.jsonl")
# Fields that may change when a run resumes: how long it runs and what it logs, not what it
# learns.  Dotted prefixes: "diagnostics" covers every diagnostics.* field.
RESUMABLE = (
    "total_env_steps",
    "log_every",
    "eval_every",
    "eval_episodes",
    "eval_video_every",
    "wandb",
    "checkpoint_every",
    "checkpoint_seconds",
    "keep_checkpoints",
    "report",
    "diagnostics",
    "max_nonfinite_updates",
    "env_check",
    "vector_mode",
    "offline.updates",
    "offline.log_every",
    "offline.checkpoint_every",
    "offline.open_loop_every",
    "offline.eval_every",
    "offline.eval_video_every",
)


class WorkdirLockedError(RuntimeError):
    """Another live process holds the workdir's lock."""


class ResumeRefusedError(ConfigError):
    """The workdir holds a run whose config or environment differs from the new one."""


FINISHED_NAME = "finished.json"


def write_finished(workdir: str, env_steps: int, eval_returns) -> None:
    """Marks ``workdir`` as a run that trained all its env steps (``--seeds`` writes it after a
    seed ends), so that rerunning the command skips the seed in a moment instead of
    rebuilding, recompiling and reloading it to find nothing left to train.  The run's config
    is its ``config.json``."""
    record = {
        "env_steps": int(env_steps),
        "eval_returns": [list(map(float, e)) for e in eval_returns],
    }
    atomic_write(os.path.join(workdir, FINISHED_NAME), json.dumps(record))


def read_finished(workdir: str, config) -> dict[str, Any] | None:
    """The :func:`write_finished` record of ``workdir`` if the run there finished with exactly
    ``config`` (its ``config.json``, compared as a resume compares it) and its final checkpoint
    is still the newest; None otherwise (no record, an unreadable one, any config difference:
    a longer ``total_env_steps`` resumes the run; a later run's newer checkpoint)."""
    try:
        with open(os.path.join(workdir, FINISHED_NAME)) as f:
            record = json.load(f)
        with open(os.path.join(workdir, "config.json")) as f:
            stored = json.load(f)
        steps = int(record["env_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(config_differences(stored, _config_dict(config), base_defaults())):
        return None
    if steps < int(config.total_env_steps) or newest_checkpoint(workdir) != steps:
        return None
    return record


def newest_checkpoint(workdir: str) -> int | None:
    """The step of the newest checkpoint directory in ``workdir`` (None: there is none)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return None
    return max((int(name) for name in os.listdir(directory) if name.isdigit()), default=None)


def has_checkpoint(workdir: str) -> bool:
    return newest_checkpoint(workdir) is not None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _resumable(field: str) -> bool:
    return any(field == p or field.startswith(p + ".") for p in RESUMABLE)


def base_defaults() -> dict[str, Any]:
    """Every field of the base config (:func:`wm_jax.config.get_config`) with its default."""
    from wm_jax.config import get_config

    return _flatten(json.loads(get_config().to_json_best_effort()))


def config_differences(
    stored: dict, new: dict, defaults: dict[str, Any] | None = None
) -> tuple[list[str], list[str]]:
    """``(refused, allowed)``: the fields that differ between two config dicts, as
    ``"field: stored -> new"``, split by whether a resume may change them.

    ``defaults`` (flattened, :func:`base_defaults`): a field the stored config lacks (the run
    predates it) and the new one holds at its default is no difference: new options default to
    what older runs did."""
    old, cur = _flatten(stored), _flatten(new)
    defaults = defaults or {}
    refused, allowed = [], []
    for field in sorted(set(old) | set(cur)):
        a, b = old.get(field, "<absent>"), cur.get(field, "<absent>")
        if a == b or (field not in old and field in defaults and defaults[field] == b):
            continue
        line = f"{field}: {a!r} -> {b!r}"
        (allowed if _resumable(field) else refused).append(line)
    return refused, allowed


def _config_dict(config) -> dict:
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return config


def atomic_write(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename: complete or absent."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def tree_bytes(tree) -> int:
    """Bytes of the arrays of a pytree (what a checkpoint of it holds)."""
    import jax
    import numpy as np

    leaves = jax.tree.leaves(tree)
    return int(sum(getattr(x, "nbytes", None) or np.asarray(x).nbytes for x in leaves))


def _step_of(row: dict[str, Any], key: str) -> int:
    try:
        return int(row.get(key, -1))
    except (TypeError, ValueError):
        return -1


class RunDir:
    """One run's hold on its workdir; see the module docstring."""

    def __init__(self, workdir: str, process_index: int = 0):
        self.path = os.path.abspath(workdir)
        self.process_index = process_index
        self.lead = process_index == 0
        name = LOCK_NAME if process_index == 0 else f"{LOCK_NAME}.process_{process_index}"
        self.lock_path = os.path.join(self.path, name)
        self._fd: int | None = None

    @classmethod
    def open(
        cls,
        workdir: str,
        config,
        spec_json: dict[str, Any] | None,
        process_index: int = 0,
    ) -> RunDir:
        """Locks ``workdir`` and checks that it can resume a run of ``config`` on ``spec_json``;
        raises (releasing the lock) otherwise.  Nothing but the lock file is created."""
        run_dir = cls(workdir, process_index)
        run_dir.lock()
        try:
            run_dir.check_resume(config, spec_json)
        except BaseException:
            run_dir.close()
            raise
        return run_dir

    # -- the lock ------------------------------------------------------------------------------

    @staticmethod
    def probe(workdir: str) -> None:
        """Raises :class:`WorkdirLockedError` at once if a live run holds ``workdir``; takes
        nothing and creates nothing (a command line calls it before importing JAX, so a second
        run is refused in a fraction of a second; the run still takes the lock properly)."""
        path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return  # no lock file: nobody has held this workdir
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            raise WorkdirLockedError(
                f"{os.path.dirname(path)} is in use by another run ({holder or 'starting up'}); "
                "one run per workdir: wait for it to end, stop it, or use another --workdir"
            ) from None
        finally:
            os.close(fd)

    def lock(self) -> None:
        try:
            os.makedirs(self.path, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise workdir_error(self.path, err, "create the run directory's lock file") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            raise WorkdirLockedError(
                f"{self.path} is in use by another run ({holder or 'a process starting up'}); "
                "one run per workdir: wait for it to end, stop it, or use another --workdir"
            ) from None
        self._fd = fd

    def _record_holder(self) -> None:
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        text = f"pid {os.getpid()} on host {socket.gethostname()}, since {since}\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode(), 0)

    def close(self) -> None:
        """Releases the lock (closing the descriptor drops it); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()

    # -- resume --------------------------------------------------------------------------------

    def check_resume(self, config, spec_json: dict[str, Any] | None) -> None:
        """Refuses to resume a checkpointed run with a different config or environment
        (``config=None``: nothing to compare, e.g. the parent directory of several seeds)."""
        if config is None or not has_checkpoint(self.path):
            return
        problems: list[str] = []
        stored_config = os.path.join(self.path, "config.json")
        if os.path.exists(stored_config):
            try:
                with open(stored_config) as f:
                    stored = json.load(f)
            except (OSError, json.JSONDecodeError) as err:
                problems.append(f"its config.json cannot be read ({err})")
                stored = None
            if stored is not None:
                refused, allowed = config_differences(
                    stored, _config_dict(config), base_defaults()
                )
                problems += refused
                for line in allowed:
                    logging.info("resuming %s with a changed %s", self.path, line)
        stored_spec = os.path.join(self.path, "env_spec.json")
        if spec_json is not None and os.path.exists(stored_spec):
            try:
                with open(stored_spec) as f:
                    old = json.load(f)
            except (OSError, json.JSONDecodeError) as err:
                problems.append(f"its env_spec.json cannot be read ({err})")
            else:
                refused, _ = config_differences(old, json.loads(json.dumps(spec_json)))
                problems += [f"environment {line}" for line in refused]
        if problems:
            listed = "\n  ".join(problems)
            may = ", ".join(RESUMABLE)
            raise ResumeRefusedError(
                f"{self.path} holds a checkpointed run that this one cannot resume; it differs "
                f"in:\n  {listed}\nOnly these fields may change on resume: {may}.  Resume with "
                "the run's own config (see its config.json), or start a new --workdir.  Nothing "
                "in the workdir was changed."
            )

    # -- files ---------------------------------------------------------------------------------

    def write_run_files(self, config, spec_json: dict[str, Any] | None) -> None:
        """Records the holder in the lock file and (process 0) ``config.json`` and
        ``env_spec.json`` (read by ``load_policy``), each written atomically."""
        try:
            os.makedirs(self.path, exist_ok=True)  # a seed's subdirectory of the device loop
            if self._fd is not None:
                self._record_holder()
            if not self.lead:
                return
            text = json.dumps(_config_dict(config), indent=1)
            atomic_write(os.path.join(self.path, "config.json"), text)
            if spec_json is not None:
                spec_text = json.dumps(spec_json, indent=1)
                atomic_write(os.path.join(self.path, "env_spec.json"), spec_text)
        except OSError as err:
            raise workdir_error(self.path, err, "write the run's files") from err

    def check_free_space(self, needed_bytes: int) -> None:
        """Raises :class:`WorkdirError` when the workdir's disk cannot hold ``needed_bytes``."""
        free = shutil.disk_usage(self.path).free
        if free < needed_bytes:
            raise WorkdirError(
                f"cannot write checkpoints in {self.path}: a checkpoint needs about "
                f"{needed_bytes / 2**20:.0f} MiB and the disk has {free / 2**20:.0f} MiB free; "
                "free space, use another --workdir, or shrink config.replay_capacity"
            )

    def continue_logs(self, step: int | None, step_key: str = "env_step") -> int:
        """Drops log rows written after ``step`` (the restored checkpoint; None: a fresh start
        drops them all) and any damaged line; returns the TensorBoard purge step."""
        if not self.lead:
            return 0
        keep_up_to = -1 if step is None else int(step)
        for name in LOG_FILES:
            path = os.path.join(self.path, name)
            if not os.path.exists(path):
                continue
            from wm_jax.metrics import read_jsonl  # (imports jax: not needed for a lock probe)

            rows = read_jsonl(path)
            kept = [r for r in rows if _step_of(r, step_key) <= keep_up_to]
            with open(path, "rb") as f:
                raw = f.read()
            text = "".join(json.dumps(r) + "\n" for r in kept)
            if text.encode() != raw:
                if len(kept) < len(rows):
                    logging.info(
                        "%s: dropped %d row(s) after step %d (not in any checkpoint)",
                        path,
                        len(rows) - len(kept),
                        keep_up_to,
                    )
                try:
                    atomic_write(path, text)
                except OSError as err:
                    raise workdir_error(self.path, err, f"rewrite {name}") from err
        return keep_up_to + 1
