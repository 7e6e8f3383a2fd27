"""The promotion gate: whether a candidate becomes champion, decided on the same test split.

:func:`decide` holds the rules people tune (``registry.*`` in params.yaml).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.config import RegistryParams
from tasks.core.files import ImageDataset, read_split
from tasks.core.lineage import (
    TAG_CLASS_NAMES,
    TAG_DECISION,
    TAG_INPUT_SHAPE,
    TAG_PREVIOUS_CHAMPION,
    Lineage,
)
from tasks.core.paths import PROCESSED_DIR
from tasks.core.tracking import get_model_version, tracking_errors
from tasks.registry.candidate import Candidate
from tasks.registry.check import NotTheRegisteredModel, load_registered, predict_raw
from tasks.registry.lock import registry_lock
from tasks.registry.store import CHALLENGER, CHAMPION, RegistryError, alias_map, client, log
from tasks.registry.versions import RegisteredVersion
from tasks.stages.evaluate import classification_scores

TOLERANCE = 1e-9  # metric comparisons: 0.99 - 0.98 must count as 0.01
SHORT_HASH = 12  # characters of a DVC hash in a reason (as git shortens commits)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    promoted: bool
    reason: str
    champion: str | None  # the version serving as champion afterwards
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None  # the previous champion, on the same test split
    recovered: str | None = None  # why its run had been left unregistered, if it had
    previous_champion: str | None = None  # the champion the gate found (under the lock)


def decide(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    policy: RegistryParams,
    champion_version: str | None = None,
) -> Decision:
    """Whether the candidate should become champion, and why, in one sentence."""
    metric = policy.metric
    value = candidate[metric]
    if value < policy.min_score - TOLERANCE:
        return Decision(
            False,
            f"{metric} {value:.4f} is below the floor registry.min_score {policy.min_score:.4f}",
        )
    if champion is None:
        return Decision(
            True,
            f"first champion: {metric} {value:.4f} clears the floor registry.min_score "
            f"{policy.min_score:.4f}",
        )
    gain = value - champion[metric]
    versus = f"champion v{champion_version}" if champion_version else "the champion"
    if gain <= TOLERANCE or gain < policy.min_improvement - TOLERANCE:
        return Decision(
            False,
            f"{metric} {value:.4f} vs {versus} {champion[metric]:.4f} ({gain:+.4f}) does not "
            f"beat it by registry.min_improvement {policy.min_improvement:.4f}",
        )
    for guard in policy.guard_metrics:
        if candidate[guard] < champion[guard] - TOLERANCE:
            return Decision(
                False,
                f"{metric} improves by {gain:+.4f}, but guard metric {guard} drops from "
                f"{champion[guard]:.4f} ({versus}) to {candidate[guard]:.4f}",
            )
    return Decision(
        True,
        f"{metric} {value:.4f} beats {versus} {champion[metric]:.4f} by {gain:+.4f} "
        f"(margin {policy.min_improvement:.4f})"
        + (
            f"; no guard metric ({', '.join(policy.guard_metrics)}) got worse"
            if policy.guard_metrics
            else ""
        ),
    )


def score_version(name: str, version: str, test: ImageDataset) -> dict[str, float]:
    """Accuracy and macro-F1 of a registered version on a test split, as evaluate scores them."""
    with load_registered(name, version) as loaded:
        return score_loaded(loaded, test)


def score_loaded(loaded: Any, test: ImageDataset) -> dict[str, float]:
    scores = predict_raw(loaded, test.images)
    result = classification_scores(test.labels, scores.argmax(axis=1), test.class_names)
    return {"accuracy": result.accuracy, "macro_f1": result.macro_f1}


class ChampionUnloadable(RegistryError):
    """The champion's artifacts are missing or damaged: it serves no one."""


def score_champion(name: str, champion: str, test: ImageDataset) -> dict[str, float]:
    """The champion's scores; ChampionUnloadable when it cannot be loaded. Only a failed *load*
    counts as a broken champion; the tracking server failing, or scoring failing (memory),
    raises as it is."""
    from mlflow.exceptions import MlflowException

    with ExitStack() as stack:
        try:
            loaded = stack.enter_context(load_registered(name, champion))
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":  # artifacts gone: broken
                raise
            raise ChampionUnloadable(
                f"champion v{champion} cannot be loaded (its artifacts are missing)"
            ) from None
        except NotTheRegisteredModel as mismatch:  # it would serve another model: not scored
            raise ChampionUnloadable(
                f"champion v{champion} is not the model it was registered as "
                f"({mismatch.problem.split(';')[0]})"
            ) from None
        except Exception as error:  # torch or MLflow reading a damaged artifact
            raise ChampionUnloadable(
                f"champion v{champion} cannot be loaded ({type(error).__name__})"
            ) from None
        return score_loaded(loaded, test)


def why_not_comparable(
    candidate_tags: Mapping[str, str], champion_tags: Mapping[str, str]
) -> str | None:
    """Why the champion cannot be scored on the candidate's test split; None when it can."""
    for tag, what in ((TAG_INPUT_SHAPE, "input shape"), (TAG_CLASS_NAMES, "classes")):
        if candidate_tags.get(tag) != champion_tags.get(tag):
            return (
                f"its {what} {champion_tags.get(tag)} differ from this model's "
                f"{candidate_tags.get(tag)}"
            )
    return None


def judge(
    candidate: Candidate,
    name: str,
    version: str,
    champion: str | None,
    test: ImageDataset,
    policy: RegistryParams,
) -> tuple[Decision, dict[str, float] | None]:
    """The gate's decision on ``version`` against the current ``champion``, and the champion's
    scores on the same test split when it could be scored."""
    if champion is None:
        return decide(candidate.metrics, None, policy), None
    champion_tags = get_model_version(name, champion).tags  # with its run's lineage
    mismatch = why_not_comparable(candidate.tags, champion_tags)
    if mismatch:
        return Decision(
            False,
            f"champion v{champion} cannot be scored on this test split ({mismatch}); promote "
            f"by hand with `mlcycle promote {version}` or use another registry.model_name",
        ), None
    try:
        champion_metrics = score_champion(name, champion, test)
    except ChampionUnloadable as broken:  # it serves no one: judged against the floor
        decision = decide(candidate.metrics, None, policy)
        return Decision(decision.promote, f"{broken}; {decision.reason}"), None
    decision = decide(candidate.metrics, champion_metrics, policy, champion)
    note = _data_note(candidate, champion_tags)
    return Decision(decision.promote, decision.reason + note), champion_metrics


def promote_if_better(
    candidate: Candidate,
    registered: RegisteredVersion,
    policy: RegistryParams,
    processed_dir: Path = PROCESSED_DIR,
) -> Registration:
    """Under the registry lock: ``challenger`` to the new version; ``champion`` too if it beats
    the champion on the same test split. The reason lands in the version's description."""
    name, version = registered.name, registered.version
    api = client()
    test, _ = read_split(processed_dir, "test")
    with tracking_errors(f"move the aliases of '{name}'"), registry_lock(name):
        champion = alias_map(name).get(CHAMPION)
        if champion == version:
            reason = f"version {version} is already the champion"
            return Registration(
                name,
                version,
                False,
                reason,
                champion,
                candidate.metrics,
                None,
                previous_champion=champion,
            )
        api.set_registered_model_alias(name, CHALLENGER, version)
        decision, champion_metrics = judge(candidate, name, version, champion, test, policy)
        outcome = "promoted to champion" if decision.promote else "kept as challenger"
        if decision.promote and champion is not None:
            api.set_model_version_tag(name, version, TAG_PREVIOUS_CHAMPION, champion)
        api.set_model_version_tag(name, version, TAG_DECISION, outcome)
        api.update_model_version(
            name,
            version,
            description=f"{outcome.capitalize()}: {decision.reason}. Registered from MLflow run "
            f"{candidate.run_id}.",
        )
        if decision.promote:  # last: a failure before this leaves the old champion in place
            api.set_registered_model_alias(name, CHAMPION, version)
    log.info("register: version %s %s: %s", version, outcome, decision.reason)
    return Registration(
        name,
        version,
        decision.promote,
        decision.reason,
        version if decision.promote else champion,
        candidate.metrics,
        champion_metrics,
        previous_champion=champion,
    )


def _data_note(candidate: Candidate, champion_tags: Mapping[str, str]) -> str:
    theirs = Lineage.from_tags(champion_tags).processed
    ours = Lineage.from_tags(candidate.tags).processed
    if theirs and ours and theirs != ours:
        return (
            f" (both scored on test split {ours[:SHORT_HASH]}; the champion was trained on data "
            f"{theirs[:SHORT_HASH]}, which may overlap it)"
        )
    return ""
