"""Loading a run's files never runs code they name.

A run's ``config.json``, an exported ``policy.json`` and a minari dataset's env spec can name
Python modules: ``config.imports`` (modules that register components) and the ``module:`` part
of a ``module:EnvId`` environment id, which ``gymnasium.make`` imports.  Importing a module runs
it, so a downloaded checkpoint could otherwise run anything on the machine that loads it.  Every
loader (``load_policy``, ``python -m wm_jax.evaluate``, ``python -m wm_jax.offline
--dataset=...``) therefore refuses such names unless its caller allows them by name
(``allow_imports=[...]`` / ``--allow_imports=...``).  A module already imported in this
process is allowed: importing it again runs nothing.  The training CLI's own ``--config`` file is
the user's code and is not checked.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from wm_jax.env_ids import GYMNAX_PREFIX


class UntrustedImportError(ValueError):
    """A file being loaded names modules to import that the caller did not allow."""


def env_module(env_id: str | None) -> str | None:
    """The module ``gymnasium.make(env_id)`` would import (``"pkg.mod"`` of
    ``"pkg.mod:Env-v0"``), or ``None`` for a plain registered id or a ``gymnax:`` id (gymnax is
    looked up in its own registry, never imported by name)."""
    if not env_id or env_id.startswith(GYMNAX_PREFIX) or ":" not in env_id:
        return None
    return env_id.split(":", 1)[0].strip() or None


def import_names(config: Mapping[str, Any]) -> list[str]:
    """The modules of ``config.imports``, which building its networks would import."""
    imports = config.get("imports") or ""
    return [n.strip() for n in str(imports).split(",") if n.strip()]


def normalize_allowed(allow_imports: str | Iterable[str] | None) -> frozenset[str]:
    """``"a,b"``, ``["a", "b"]`` or ``None`` as a set of module names."""
    if allow_imports is None:
        return frozenset()
    if isinstance(allow_imports, str):
        allow_imports = allow_imports.split(",")
    return frozenset(n.strip() for n in allow_imports if n and n.strip())


def check_modules(
    names: Iterable[str], allow_imports: str | Iterable[str] | None, source: str
) -> None:
    """Raises :class:`UntrustedImportError` for any of ``names`` that is neither allowed by the
    caller nor already imported; ``source`` says which file named them."""
    allowed = normalize_allowed(allow_imports)
    refused = [n for n in names if n not in allowed and n not in sys.modules]
    if refused:
        listed = ",".join(refused)
        raise UntrustedImportError(
            f"{source} names Python module(s) {', '.join(map(repr, refused))} to import; "
            "importing a module runs its code, so nothing a loaded file names is imported "
            f"unless you allow it. If you trust this run, pass allow_imports=[{listed!r}] "
            f"(command line: --allow_imports={listed})"
        )


def check_imports(
    config: Mapping[str, Any], allow_imports: str | Iterable[str] | None, source: str
) -> None:
    """:func:`check_modules` for the modules of ``config.imports``."""
    check_modules(import_names(config), allow_imports, f"{source} (config.imports)")


def check_env_id(
    env_id: str | None, allow_imports: str | Iterable[str] | None, source: str
) -> None:
    """:func:`check_modules` for the module making ``env_id`` would import, if any."""
    module = env_module(env_id)
    check_modules([module] if module else [], allow_imports, f"{source} {env_id!r}")
