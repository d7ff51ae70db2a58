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

import logging as py_logging
import signal

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
    if logging.get_verbosity() < logging.DEBUG:  # absl: DEBUG is 1, INFO 0
        logging.get_absl_handler().addFilter(_LibraryInfoFilter())


def start(lead: bool = True) -> None:
    """The start of a command line's ``main``: signals, compilation cache, logging."""
    exit_on_termination()
    enable_compilation_cache()
    configure_logging(lead)
