"""Moves by hand: ``mlcycle promote`` and ``rollback``, with the same load-back check."""

from __future__ import annotations

from pathlib import Path

from tasks.core.lineage import TAG_DECISION, TAG_PREVIOUS_CHAMPION
from tasks.core.paths import PROCESSED_DIR
from tasks.core.tracking import connect, get_model_version, tracking_errors
from tasks.registry.check import check_samples_for, check_version
from tasks.registry.gate import why_not_comparable
from tasks.registry.lock import registry_lock
from tasks.registry.store import CHAMPION, RegistryError, alias_map, client, log


def move_champion(
    name: str,
    version: str,
    note: str,
    processed_dir: Path = PROCESSED_DIR,
    samples: int = 64,
    remember_previous: bool = True,
    force: bool = False,
) -> str | None:
    """Point ``champion`` at ``version`` after it passes the load-back check; returns the
    version that held it before. ``remember_previous``: record that version on the new
    champion, so that ``rollback`` undoes this move (a rollback itself keeps the old record,
    so a second rollback goes further back). A version whose classes or input shape differ
    from the champion's would change what clients get back: refused unless ``force``."""
    api = client()
    with tracking_errors(f"move the champion of '{name}'"), registry_lock(name):
        tags = get_model_version(name, version).tags
        previous = alias_map(name).get(CHAMPION)
        if previous == version:
            raise RegistryError(f"version {version} of '{name}' is already the champion")
        if previous is not None and not force:
            mismatch = why_not_comparable(tags, get_model_version(name, previous).tags)
            if mismatch:
                raise RegistryError(
                    f"version {version} of '{name}' cannot replace champion v{previous} "
                    f"without changing what clients get: the champion's "
                    f"{mismatch.removeprefix('its ')}; `mlcycle promote {version} --force` "
                    "if that is what you want"
                )
        check_version(name, version, check_samples_for(name, version, tags, processed_dir, samples))
        if previous is not None and remember_previous:
            api.set_model_version_tag(name, version, TAG_PREVIOUS_CHAMPION, previous)
        api.set_registered_model_alias(name, CHAMPION, version)
        api.set_model_version_tag(name, version, TAG_DECISION, note)
    log.info("champion of '%s': version %s -> %s (%s)", name, previous, version, note)
    return previous


def promote(
    name: str, version: str, processed_dir: Path = PROCESSED_DIR, force: bool = False
) -> str | None:
    connect()
    note = "promoted by hand" + (" (forced)" if force else "")
    return move_champion(name, version, note, processed_dir, force=force)


def rollback(name: str, processed_dir: Path = PROCESSED_DIR) -> tuple[str, str]:
    """``champion`` back to the version it replaced; returns (from, to)."""
    connect()
    with tracking_errors(f"read the champion of '{name}'"):
        current = alias_map(name).get(CHAMPION)
        if current is None:
            raise RegistryError(f"'{name}' has no champion to roll back")
        previous = get_model_version(name, current).tags.get(TAG_PREVIOUS_CHAMPION)
    if not previous:
        raise RegistryError(
            f"champion v{current} of '{name}' replaced no earlier champion; nothing to roll back to"
        )
    move_champion(
        name,
        previous,
        f"champion again by rollback from v{current}",
        processed_dir,
        remember_previous=False,
    )
    return current, previous
