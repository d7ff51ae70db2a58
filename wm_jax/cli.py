"""What every wm_jax command line does before its work: signals, the compilation cache, logs.

* SIGTERM exits with status 143 until the training loop installs its own handler (finish the
  step, save, exit): during start-up there is nothing new to save and every file written so far
  was written atomically.
* JAX's persistent compilation cache is on (:mod:`wm_jax.compilation_cache`).
* The log shows the run, not its libraries: INFO lines of orbax (option dumps, per-save
  throughput) and jax (backend probing) are dropped unless ``--verbosity`` asks for DEBUG (1)
  or more, and an explicit ``--verbosity`` is respected.
"""

from __future__ import annotations

import hashlib
import logging as py_logging
import os
import re
import signal
import sys

from absl import flags, logging

from wm_jax.compilation_cache import enable_compilation_cache


def exit_on_termination() -> None:
    def terminate(signum, frame):
        del frame
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


class _LibraryInfoFilter(py_logging.Filter):
    """Drops records below WARNING that come from orbax's or jax's own modules."""

    LIBRARIES = ("/orbax/", "/jax/", "/jaxlib/")

    def filter(self, record: py_logging.LogRecord) -> bool:
        if record.levelno >= py_logging.WARNING:
            return True
        return not any(lib in record.pathname for lib in self.LIBRARIES)


def configure_logging(lead: bool = True) -> None:
    """INFO for process 0 (WARNING for the others) unless ``--verbosity`` was given; orbax's
    INFO chatter filtered out below DEBUG."""
    given = "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present
    if not given:
        logging.set_verbosity(logging.INFO if lead else logging.WARNING)
    handler = logging.get_absl_handler()
    quiet = [f for f in handler.filters if isinstance(f, _LibraryInfoFilter)]
    if logging.get_verbosity() < logging.DEBUG and not quiet:  # absl: DEBUG is 1, INFO 0
        handler.addFilter(_LibraryInfoFilter())


def default_workdir(config_file: str, config, seeds: str | None, argv: list[str]) -> str:
    """``runs/<config file>-<env>-seed<S>``, plus a short hash of the command's ``--config.*``
    and ``--env_kwargs`` overrides when there are any: the same command always names the same
    directory, so rerunning it resumes the run, and a changed override starts another one."""
    stem = os.path.splitext(os.path.basename(config_file or "config"))[0]
    env = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.env_id)
    seed = f"seeds{seeds.replace(',', '-')}" if seeds else f"seed{config.seed}"
    name = f"{stem}-{env}-{seed}"
    overrides = sorted(a for a in argv[1:] if a.startswith(("--config.", "--env_kwargs")))
    if overrides:
        name += "-" + hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:8]
    return os.path.join("runs", name)


def offscreen_rendering() -> None:
    """The command lines render frames (evaluation GIFs and videos) but never open a window:
    SDL's dummy video and audio drivers keep pygame from probing displays and sound cards,
    which prints ALSA / XDG_RUNTIME_DIR errors on headless machines.  A driver the user set is
    kept."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


def start(lead: bool = True) -> None:
    """The start of a command line's ``main``: signals, compilation cache, logging, offscreen
    rendering."""
    exit_on_termination()
    enable_compilation_cache()
    configure_logging(lead)
    offscreen_rendering()


FLAGS_HINT = "--helpshort lists the flags"
CONFIG_HINT = "docs/config.md explains every field"


def usage_exit(message: str, hint: str = FLAGS_HINT) -> None:
    """A usage error as one line on stderr and status 1: the message and where to look, never
    the flags' help (which ``app.UsageError`` prints before it) nor a traceback."""
    text = " ".join(str(message).split())
    sys.stderr.write(f"FATAL Flags parsing error: {text} ({hint})\n")
    sys.exit(1)


def _config_error_exit(err: BaseException) -> None:
    text = str(err).replace("\\n", " ").replace("\n", " ")
    missing_part, _, _ = text.partition("Did you mean")
    names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", missing_part))
    overrides = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.")]
    field = next(
        (o for o in overrides if any(part in names for part in o.split(".")[1:])),
        overrides[0] if overrides else "(a --config override)",
    )
    hint = re.search(r'Did you mean "([^"]+)"', text)
    message = f"unknown config field {field}"
    if hint:
        message += f": did you mean {hint.group(1)!r}?"
    usage_exit(message, "docs/config.md lists every field")


def define_config_flag(default: str, lock_config: bool = True):
    """``--config`` (a Python config file) with ``--config.x=y`` overrides.  ml_collections
    resolves the overrides of ``sys.argv`` when the flag is defined: one naming a field that does
    not exist (a typo such as ``--config.actor.lrr``) ends the program with a one-line message
    and the closest field name, not a traceback."""
    from ml_collections import config_flags

    try:
        return config_flags.DEFINE_config_file(
            "config",
            default=default,
            help_string="Python config file with get_config(); override fields with --config.x=y.",
            lock_config=lock_config,
        )
    except (AttributeError, KeyError) as err:
        _config_error_exit(err)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with one-line errors (:func:`usage_exit`, :func:`define_config_flag`),
    a missing or unparsable ``--config`` file included."""
    try:
        args = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
            flags.FLAGS["config"].value.keys()  # ml_collections raises a missing file's error here
    except flags.Error as err:  # absl's own parser would add a second line pointing to --help
        usage_exit(str(err))
    except (AttributeError, KeyError) as err:
        _config_error_exit(err)
    except SyntaxError as err:  # the config file's own: where, not a traceback through absl
        usage_exit(f"the config file {err.filename} does not parse: {err.msg} (line {err.lineno})")
    except OSError as err:  # a config file that is missing (at an override or the first read)
        _missing_config_exit(err)
    return args


def _missing_config_exit(err: BaseException) -> None:
    reason = str(err).strip().splitlines()[-1].strip()  # "[Errno 2] No such file ...: 'path'"
    usage_exit(f"the --config file cannot be loaded: {reason}")


def run_with_exit_statuses(fn, workdir: str):
    """``fn()``, with the run's named failures turned into the CLI's documented exit statuses
    (:mod:`wm_jax.errors`) and a one-line message instead of a traceback; a config error is a
    usage error (status 1).  Shared by ``wm_jax.train`` and ``wm_jax.offline``."""
    import os

    from wm_jax.checkpoint import CheckpointSaveError
    from wm_jax.config import ConfigError
    from wm_jax.env_guard import InvalidEnvDataError
    from wm_jax.errors import (
        EXIT_ENV_DATA,
        EXIT_ENV_ERROR,
        EXIT_LOCKED,
        EXIT_NONFINITE,
        EXIT_RESUME_REFUSED,
        EXIT_WORKDIR,
        WorkdirError,
        is_storage_error,
        stop_with,
        workdir_error,
    )
    from wm_jax.run_dir import ResumeRefusedError, WorkdirLockedError
    from wm_jax.shell import NonFiniteError
    from wm_jax.vector_env import EnvStepError

    statuses = (  # ResumeRefusedError before ConfigError, its base class
        (WorkdirLockedError, EXIT_LOCKED),
        (ResumeRefusedError, EXIT_RESUME_REFUSED),
        ((WorkdirError, CheckpointSaveError), EXIT_WORKDIR),
        (NonFiniteError, EXIT_NONFINITE),
        (InvalidEnvDataError, EXIT_ENV_DATA),
        (EnvStepError, EXIT_ENV_ERROR),
    )
    try:
        return fn()
    except Exception as err:
        for kinds, status in statuses:
            if isinstance(err, kinds):
                stop_with(err, status)
        if isinstance(err, ConfigError):
            usage_exit(str(err), CONFIG_HINT)
        if is_storage_error(err):
            error = workdir_error(os.path.abspath(workdir), err, "write the run")
            stop_with(error, EXIT_WORKDIR)
        raise
