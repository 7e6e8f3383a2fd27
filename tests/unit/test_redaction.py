"""The one redaction: credentials in URLs and query strings become ``***``, the rest stays."""

from __future__ import annotations

import logging

import pytest

from tasks.core.redaction import (
    install_log_redaction,
    redact,
    redact_mapping,
    redact_value,
    without_credentials,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://user:secret@host:5000/x", "http://user:***@host:5000/x"),
        (
            "could not reach postgresql+psycopg://me:s3cr3t@127.0.0.1:1/x (refused)",
            "could not reach postgresql+psycopg://me:***@127.0.0.1:1/x (refused)",
        ),
        ("https://ghp_token123@github.com/o/r", "https://***@github.com/o/r"),
        ("http://u:p@ss@host/", "http://u:***@host/"),  # a raw "@" in the password
        ("repr: 'http://a:b@h', 'c@d'", "repr: 'http://a:***@h', 'c@d'"),
        ('{"uri":"http://a:b@h","mail":"c@d"}', '{"uri":"http://a:***@h","mail":"c@d"}'),
        (
            "postgresql://h/db?password=pw&sslmode=require",
            "postgresql://h/db?password=***&sslmode=require",
        ),
        ("https://h/x?a=1&Token=abc#frag", "https://h/x?a=1&Token=***#frag"),
        ("two: http://a:1@h and s3://k:2@b", "two: http://a:***@h and s3://k:***@b"),
    ],
)
def test_redact_masks_credentials(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:5000/api/2.0",
        "mail me at alice@example.com",
        "sqlite:///mlflow.db",
        "models:/mnist@champion",
        "x=1 y=2",
        "",
    ],
)
def test_redact_leaves_plain_text_alone(text: str) -> None:
    assert redact(text) == text


def test_redact_mapping_walks_nested_values_and_masks_secret_keys() -> None:
    params = {
        "select.storage": "postgresql://me:s3cr3t@h/x",
        "nested": [{"uri": "http://a:b@h"}, ("http://c:d@h",)],
        "password": "plain-secret",
        "epochs": 3,
        "empty_token": None,
    }
    assert redact_mapping(params) == {
        "select.storage": "postgresql://me:***@h/x",
        "nested": [{"uri": "http://a:***@h"}, ("http://c:***@h",)],
        "password": "***",
        "epochs": 3,
        "empty_token": None,
    }
    assert params["password"] == "plain-secret"  # a copy: the caller's values are untouched
    assert redact_value(7) == 7


def test_without_credentials_makes_a_clean_link() -> None:
    assert without_credentials("http://a:b@h:5000/#/x?token=t") == "http://h:5000/#/x?token=***"
    assert without_credentials("http://h:5000/#/x") == "http://h:5000/#/x"


def test_every_log_record_is_redacted_whatever_handler_prints_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Installed once, it reaches loggers and handlers configured after it (as Prefect's are)."""
    unredacted_factory = logging.getLogRecordFactory()
    install_log_redaction()
    install_log_redaction()  # idempotent: one factory, not two stacked
    logger = logging.getLogger("mlcycle.test_redaction")
    handler = logging.StreamHandler()  # stderr: added after the factory was installed
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("tracking at http://a:s3cr3t@h")
        logger.warning("tracking at %s (%r)", "http://a:s3cr3t@h", {"u": "http://b:s3cr3t@h"})
        logger.warning("error: %s", ConnectionError("refused by http://a:s3cr3t@h"))
        logger.warning("%(uri)s", {"uri": "http://a:s3cr3t@h"})
        try:
            raise RuntimeError("http://a:s3cr3t@h is down")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logging.setLogRecordFactory(unredacted_factory)
    printed = capsys.readouterr().err
    assert "s3cr3t" not in printed, printed
    assert printed.count("tracking at http://a:***@h") == 2, printed
    assert "{'u': 'http://b:***@h'}" in printed
    assert "error: refused by http://a:***@h" in printed
    assert "RuntimeError: http://a:***@h is down" in printed


def test_a_flow_records_its_parameters_without_secrets() -> None:
    from tasks.core.config import load_params
    from tasks.core.console import flow_without_secrets
    from tests.helpers import REPO_ROOT

    params = load_params(
        REPO_ROOT / "params.yaml", overrides=["select.storage=postgresql://me:s3cr3t@h/x"]
    )

    @flow_without_secrets(name="secrets-test")
    def pipeline(params: object, uri: str) -> None: ...

    recorded = pipeline.serialize_parameters({"params": params, "uri": "http://a:s3cr3t@h"})
    assert recorded["params"]["select"]["storage"] == "postgresql://me:***@h/x"
    assert recorded["uri"] == "http://a:***@h"
    assert params.select.storage == "postgresql://me:s3cr3t@h/x"  # the flow gets it whole


def test_odd_log_arguments_are_logged_and_an_exception_message_is_redacted(caplog):
    """A namedtuple argument (no constructor from an iterable) must not make logging raise; an
    exception logged as the message itself is masked too."""
    from collections import namedtuple

    install_log_redaction()
    Point = namedtuple("Point", "url port")
    log = logging.getLogger("mlcycle.test-redaction")
    with caplog.at_level(logging.WARNING, logger="mlcycle.test-redaction"):
        log.warning("at %s", Point("http://u:hunter2@h/", 1))
        log.warning(RuntimeError("cannot reach http://u:hunter2@h/"))
    assert len(caplog.records) == 2
    assert "hunter2" not in caplog.text and "http://u:***@h/" in caplog.text
