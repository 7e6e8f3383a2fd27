"""Export the served predictions people labelled (``POST /feedback``) as training data.

The export is ``data/external/feedback.npz`` (arrays ``images``, ``labels``, ``class_names``
as the ``npz:`` source reads them, plus ``prediction_ids``), which the collect stage adds to
its source when ``collect.feedback`` is true; ``dvc add`` versions it (``feedback.npz.dvc``).
The file is written only when its content changes, and byte for byte the same for the same
labelled rows, so DVC sees a change exactly when there is one.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import task

from tasks.core.dvc import track_file
from tasks.core.files import atomic_path
from tasks.core.paths import FEEDBACK_FILE, PREDICTION_LOG
from tasks.core.prediction_log.readers import LabelledRow, read_class_names, read_labelled

log = logging.getLogger("mlcycle.feedback")

FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: no clock in the bytes


@dataclass(frozen=True)
class ExportResult:
    path: Path
    samples: int  # labelled images in the file; 0 when there were none (no file written)
    written: bool  # False: nothing labelled yet, or the file held exactly this already
    left_out: int  # labelled images of another shape than the newest ones, not exported
    image_shape: tuple[int, int, int] | None
    class_names: tuple[str, ...]
    tracked: bool  # `dvc add` ran: the file changed, or had no .dvc file yet
    message: str  # what happened, in one line


def export_feedback(
    log_path: Path = PREDICTION_LOG,
    out_path: Path = FEEDBACK_FILE,
    dvc_root: Path | None = Path(),
) -> ExportResult:
    """Write the labelled images of the prediction log to ``out_path``, oldest first, and
    ``dvc add`` it in the DVC project at ``dvc_root`` (None: leave DVC alone).

    Only images of the newest labelled image's shape are exported: a model change that
    changed the input shape leaves older labels that cannot train the same network; they are
    counted in ``left_out``. No labelled rows: nothing is written (an earlier export stays)."""
    rows = read_labelled(log_path)
    if not rows:
        kept_note = f"; the earlier {out_path} stays" if out_path.is_file() else ""
        message = f"feedback: no labelled predictions in {log_path} yet, nothing to export"
        log.info("%s%s", message, kept_note)
        return ExportResult(out_path, 0, False, 0, None, (), False, message + kept_note)
    shape = rows[-1].image.shape
    kept = [row for row in rows if row.image.shape == shape]
    class_names = export_classes(log_path, kept)
    position = {name: index for index, name in enumerate(class_names)}
    content = npz_bytes(
        {
            "images": np.stack([row.image for row in kept]),
            "labels": np.asarray([position[row.label_name] for row in kept], dtype=np.int64),
            "class_names": np.asarray(class_names, dtype=str),
            "prediction_ids": np.asarray([row.prediction_id for row in kept], dtype=str),
        }
    )
    written = not (out_path.is_file() and out_path.read_bytes() == content)
    if written:
        with atomic_path(out_path) as tmp:
            tmp.write_bytes(content)
    dvc_file = out_path.with_name(f"{out_path.name}.dvc")
    tracked = dvc_root is not None and (written or not dvc_file.is_file())
    if tracked:
        track_file(dvc_root, out_path)
    message = (
        f"feedback: {len(kept)} labelled images -> {out_path}"
        + ("" if written else " (unchanged, not rewritten)")
        + (f"; DVC tracks it: commit {dvc_file}" if tracked else "")
        + _left_out_note(rows, kept, shape)
    )
    log.info(message)
    return ExportResult(
        path=out_path,
        samples=len(kept),
        written=written,
        left_out=len(rows) - len(kept),
        image_shape=tuple(int(size) for size in shape),  # type: ignore[arg-type]
        class_names=class_names,
        tracked=tracked,
        message=message,
    )


def export_classes(log_path: Path, rows: Sequence[LabelledRow]) -> tuple[str, ...]:
    """The classes of the newest row's model version, then any other class the rows were
    labelled with (a version with other classes), in the order they first appear: the
    collect stage maps them onto its source's classes by name."""
    newest = rows[-1]
    names = list(read_class_names(log_path, newest.model_name, newest.model_version) or ())
    for row in rows:
        if row.label_name not in names:
            names.append(row.label_name)
    return tuple(names)


def _left_out_note(
    rows: Sequence[LabelledRow], kept: Sequence[LabelledRow], shape: tuple[int, ...]
) -> str:
    if len(kept) == len(rows):
        return ""
    others = sorted({"x".join(map(str, row.image.shape)) for row in rows} - {_text(shape)})
    return (
        f"; {len(rows) - len(kept)} labelled images of {', '.join(others)} left out: the "
        f"newest are {_text(shape)} (the served model changed its input shape), and one "
        "training set holds one shape"
    )


def _text(shape: tuple[int, ...]) -> str:
    return "x".join(str(size) for size in shape)


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """What ``np.savez`` writes, with a fixed timestamp on every member: the same arrays give
    the same bytes (np.savez stamps the current time, a new DVC hash every export)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_TIME)
            with archive.open(member, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


# The training flow runs it before collect (DVC then sees the new labels as a changed dep).
export_feedback_task = task(name="export-feedback")(export_feedback)
