"""Moves by hand: ``mlcycle promote`` and ``rollback``, with the same load-back check.

Each move reads the champion and writes the alias under the one registry lock: a rollback
that read the champion before waiting for the lock would undo a promotion it never saw.
The load-back check scores the first ``registry.check_samples`` test images of the workspace,
as registration does, unless the version has a check record of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.core.config import RegistryParams
from tasks.core.lineage import TAG_DECISION, TAG_PREVIOUS_CHAMPION
from tasks.core.paths import PROCESSED_DIR
from tasks.core.tracking import connect, get_model_version, tracking_errors
from tasks.registry.check import check_samples_for, check_version
from tasks.registry.gate import why_not_comparable
from tasks.registry.lock import registry_lock
from tasks.registry.store import CHAMPION, RegistryError, alias_map, client, log, parse_version

PROMOTED = "promoted by hand"  # TAG_DECISION of a version a person promoted
FORCE_PROMOTED = "promoted by hand (forced)"  # ... whose classes or input shape differ


def promote(
    name: str, version: str, policy: RegistryParams, processed_dir: Path = PROCESSED_DIR
) -> str | None:
    """Point ``champion`` at ``version`` after it passes the load-back check; returns the
    version that held it before, which a later ``rollback`` goes back to. A version whose
    classes or input shape differ from the champion's would change what clients get back:
    refused (:func:`force_promote` takes it anyway)."""
    version = parse_version(version)  # before anything is read or written
    with _holding_champion(name, "move") as previous:
        _refuse_same(name, version, previous)
        _refuse_incomparable(name, version, previous)
        _promote(name, version, previous, PROMOTED, processed_dir, policy.check_samples)
    return previous


def force_promote(
    name: str, version: str, policy: RegistryParams, processed_dir: Path = PROCESSED_DIR
) -> str | None:
    """:func:`promote`, even when the version's classes or input shape differ from the
    champion's (clients then get other answers): a person said so."""
    version = parse_version(version)
    with _holding_champion(name, "move") as previous:
        _refuse_same(name, version, previous)
        _promote(name, version, previous, FORCE_PROMOTED, processed_dir, policy.check_samples)
    return previous


def rollback(
    name: str, policy: RegistryParams, processed_dir: Path = PROCESSED_DIR
) -> tuple[str, str]:
    """``champion`` back to the version it replaced; returns (from, to). The version rolled
    back to keeps its own record, so a second rollback goes further back."""
    with _holding_champion(name, "roll back") as current:
        if current is None:
            raise RegistryError(f"'{name}' has no champion to roll back")
        recorded = get_model_version(name, current).tags.get(TAG_PREVIOUS_CHAMPION)
        if not recorded:
            raise RegistryError(
                f"champion v{current} of '{name}' replaced no earlier champion; nothing to roll "
                "back to"
            )
        previous = parse_version(recorded, f"version {current}'s tag {TAG_PREVIOUS_CHAMPION}")
        _load_check(name, previous, processed_dir, policy.check_samples)
        _point_champion(name, previous, current, f"champion again by rollback from v{current}")
    return current, previous


@contextmanager
def _holding_champion(name: str, action: str) -> Iterator[str | None]:
    """Under the registry lock of ``name``: the version that is champion now (None if none)."""
    connect()
    with tracking_errors(f"{action} the champion of '{name}'"), registry_lock(name):
        yield alias_map(name).get(CHAMPION)


def _refuse_same(name: str, version: str, champion: str | None) -> None:
    if champion == version:
        raise RegistryError(f"version {version} of '{name}' is already the champion")


def _refuse_incomparable(name: str, version: str, champion: str | None) -> None:
    """RegistryError when ``version`` would answer clients with other classes or take
    another input shape than ``champion`` does."""
    if champion is None:
        return
    mismatch = why_not_comparable(
        get_model_version(name, version).tags, get_model_version(name, champion).tags
    )
    if mismatch:
        raise RegistryError(
            f"version {version} of '{name}' cannot replace champion v{champion} "
            f"without changing what clients get: the champion's "
            f"{mismatch.removeprefix('its ')}; `mlcycle promote {version} --force` "
            "if that is what you want"
        )


def _promote(
    name: str,
    version: str,
    previous: str | None,
    note: str,
    processed_dir: Path,
    check_samples: int,
) -> None:
    """Check ``version``, record ``previous`` on it (before the alias moves, so that
    ``rollback`` undoes this move) and point ``champion`` at it."""
    _load_check(name, version, processed_dir, check_samples)
    if previous is not None:
        client().set_model_version_tag(name, version, TAG_PREVIOUS_CHAMPION, previous)
    _point_champion(name, version, previous, note)


def _load_check(name: str, version: str, processed_dir: Path, check_samples: int) -> None:
    """The load-back check, on the version's check record or the workspace's test images."""
    tags = get_model_version(name, version).tags
    check_version(name, version, check_samples_for(tags, processed_dir, check_samples))


def _point_champion(name: str, version: str, previous: str | None, note: str) -> None:
    client().set_registered_model_alias(name, CHAMPION, version)
    client().set_model_version_tag(name, version, TAG_DECISION, note)
    log.info("champion of '%s': version %s -> %s (%s)", name, previous, version, note)
