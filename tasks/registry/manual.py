"""Moves by hand: ``mlcycle promote`` and ``rollback``, with the same load-back check.

Each move reads the champion and writes the alias under the one registry lock: a rollback
that read the champion before waiting for the lock would undo a promotion it never saw.
"""

from __future__ import annotations

from pathlib import Path

from tasks.core.lineage import TAG_DECISION, TAG_PREVIOUS_CHAMPION
from tasks.core.paths import PROCESSED_DIR
from tasks.core.tracking import connect, get_model_version, tracking_errors
from tasks.registry.check import check_samples_for, check_version
from tasks.registry.gate import why_not_comparable
from tasks.registry.lock import registry_lock
from tasks.registry.store import CHAMPION, RegistryError, alias_map, client, log, parse_version


def promote(
    name: str, version: str, processed_dir: Path = PROCESSED_DIR, force: bool = False
) -> str | None:
    """Point ``champion`` at ``version`` after it passes the load-back check; returns the
    version that held it before, which a later ``rollback`` goes back to. A version whose
    classes or input shape differ from the champion's would change what clients get back:
    refused unless ``force``."""
    version = parse_version(version)  # before anything is read or written
    connect()
    note = "promoted by hand" + (" (forced)" if force else "")
    with tracking_errors(f"move the champion of '{name}'"), registry_lock(name):
        previous = alias_map(name).get(CHAMPION)
        if previous == version:
            raise RegistryError(f"version {version} of '{name}' is already the champion")
        _move_champion(name, version, previous, note, processed_dir, force=force)
    return previous


def rollback(name: str, processed_dir: Path = PROCESSED_DIR) -> tuple[str, str]:
    """``champion`` back to the version it replaced; returns (from, to). The version rolled
    back to keeps its own record, so a second rollback goes further back."""
    connect()
    with tracking_errors(f"roll back the champion of '{name}'"), registry_lock(name):
        current = alias_map(name).get(CHAMPION)
        if current is None:
            raise RegistryError(f"'{name}' has no champion to roll back")
        recorded = get_model_version(name, current).tags.get(TAG_PREVIOUS_CHAMPION)
        if not recorded:
            raise RegistryError(
                f"champion v{current} of '{name}' replaced no earlier champion; nothing to roll "
                "back to"
            )
        previous = parse_version(recorded, f"version {current}'s tag {TAG_PREVIOUS_CHAMPION}")
        note = f"champion again by rollback from v{current}"
        _move_champion(name, previous, current, note, processed_dir, remember_previous=False)
    return current, previous


def _move_champion(
    name: str,
    version: str,
    previous: str | None,
    note: str,
    processed_dir: Path,
    samples: int = 64,
    remember_previous: bool = True,
    force: bool = False,
) -> None:
    """``champion`` from ``previous`` (as read under the held registry lock) to ``version``,
    once it passes the load-back check. ``remember_previous``: record ``previous`` on
    ``version`` (before the alias moves), so that ``rollback`` undoes this move."""
    tags = get_model_version(name, version).tags
    if previous is not None and not force:
        mismatch = why_not_comparable(tags, get_model_version(name, previous).tags)
        if mismatch:
            raise RegistryError(
                f"version {version} of '{name}' cannot replace champion v{previous} "
                f"without changing what clients get: the champion's "
                f"{mismatch.removeprefix('its ')}; `mlcycle promote {version} --force` "
                "if that is what you want"
            )
    check_version(name, version, check_samples_for(tags, processed_dir, samples))
    if previous is not None and remember_previous:
        client().set_model_version_tag(name, version, TAG_PREVIOUS_CHAMPION, previous)
    client().set_registered_model_alias(name, CHAMPION, version)
    client().set_model_version_tag(name, version, TAG_DECISION, note)
    log.info("champion of '%s': version %s -> %s (%s)", name, previous, version, note)
