"""The sections of what runs beside the pipeline: serving, the Prefect schedules, monitoring."""

from __future__ import annotations

from pydantic import Field, field_validator

from tasks.core.config.base import Section
from tasks.core.config.cron import cron_problem


class ServeParams(Section):
    host: str = Field(min_length=1, description="Bind address; 127.0.0.1 keeps it on this machine.")
    port: int = Field(ge=1, le=65535, description="TCP port of mlcycle serve.")
    alias: str = Field(min_length=1, description="The registry alias served (champion).")
    max_batch: int = Field(ge=1, description="Images per /predict request, at most.")
    max_body_bytes: int = Field(ge=1024, description="Request body size limit.")
    max_image_side: int = Field(ge=1, description="Decoded images larger than this are refused.")
    poll_seconds: float = Field(
        gt=0, description="How often the app checks whether the alias moved (then reloads)."
    )
    log_sample_rate: float = Field(
        ge=0, le=1, description="Share of requests whose inputs and outputs are logged."
    )
    log_max_rows: int = Field(ge=1, description="Prediction log retention: newest rows kept.")
    deploy_timeout_s: float = Field(gt=0, description="Deploy waits this long for /ready.")
    start_on_deploy: bool = Field(
        description="Deploy starts `mlcycle serve` in the background when none is running."
    )
    threads: int = Field(
        ge=1,
        le=64,
        description="Requests decoded and predicted at once, in a pool beside the event loop.",
    )


WORK_POOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"  # a Prefect work pool's name
SLOT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,99}$"  # a Prefect global concurrency limit's name


class ScheduleParams(Section):
    work_pool: str = Field(pattern=WORK_POOL_PATTERN, description="Prefect process work pool.")
    retrain_cron: str = Field(description="When `training-pipeline/scheduled` runs (cron).")
    monitor_cron: str = Field(description="When `monitoring/hourly` runs (cron).")
    timezone: str = Field(min_length=1, description="The crons' time zone (IANA name).")
    training_slot: str = Field(
        pattern=SLOT_PATTERN,
        description="Prefect global concurrency limit (1 slot): one training run at a time.",
    )
    slot_wait_minutes: float = Field(
        gt=0, description="A training run waits this long for the slot, then gives up."
    )

    @field_validator("retrain_cron", "monitor_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        problem = cron_problem(value)
        if problem:
            raise ValueError(f"{value!r} is not a cron expression like '0 3 * * 1': {problem}")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone like 'UTC' or 'Europe/Paris'"
            ) from None
        return value


class MonitorParams(Section):
    window: int = Field(ge=1, description="Newest logged predictions compared (rows).")
    max_age_hours: float = Field(
        gt=0, description="Logged predictions older than this are left out."
    )
    min_rows: int = Field(ge=1, description="Fewer rows than this: `not enough data`.")
    p_value: float = Field(
        gt=0, lt=1, description="A statistical test below this p-value says `drifted`."
    )
    drift_share: float = Field(
        gt=0, le=1, description="Input drift when at least this share of image features drifted."
    )
    low_confidence: float = Field(
        gt=0, lt=1, description="A prediction below this top probability counts as unsure."
    )
    max_low_confidence_increase: float = Field(
        gt=0, le=1, description="Confidence drift: unsure share rose by more than this."
    )
    max_accuracy_drop: float = Field(
        gt=0, le=1, description="Live accuracy (labelled feedback) below test accuracy by this."
    )
    min_labels: int = Field(ge=1, description="Labelled predictions needed to judge accuracy.")
    retrain_on_drift: bool = Field(
        description="The drift event triggers `training-pipeline/scheduled` (make deploy)."
    )
    cooldown_hours: float = Field(
        ge=0, description="The drift trigger's window: one retraining in this many hours."
    )
    retrain_delay_minutes: float = Field(
        ge=0,
        description="The drift trigger's training starts this long after the event, so that "
        "labelled feedback of the new population accumulates first.",
    )
