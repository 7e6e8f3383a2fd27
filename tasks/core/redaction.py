"""One redaction for credentials in text: applied wherever a value leaves the process (console
and run logs, CLI errors, HTTP answers, MLflow params and tags, Prefect artifacts).

A tracking or storage URL may carry a password (``http://alice:s3cr3t@host``,
``postgresql://me:s3cr3t@host/db``) or a token in its query (``?password=``, ``&token=``). The
password becomes ``***`` and the rest stays readable (``http://alice:***@host``), so a message
still says which server it is about.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

MASK = "***"

# scheme://userinfo@ : the userinfo runs to the LAST "@" of the authority (a raw "@" inside a
# password is common in hand-written URLs); it stops at what ends an authority or a quoted
# string, so a URL inside a repr or JSON keeps its neighbours.
_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#\"'<>`\\]*)@"
)

# Query keys whose value is a secret by name; their value becomes ``***``.
SECRET_KEY_NAMES = (
    "password",
    "passwd",
    "pwd",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "api-key",
    "secret",
    "client_secret",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-security-token",
)
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:" + "|".join(re.escape(n) for n in SECRET_KEY_NAMES) + r")=)"
    r"(?P<value>[^&#\s\"'<>`]+)",
    re.IGNORECASE,
)


def _mask_userinfo(match: re.Match[str]) -> str:
    """``user:password`` -> ``user:***``; a lone user (a token used as the user) -> ``***``."""
    user, colon, _password = match["userinfo"].partition(":")
    masked = f"{user}:{MASK}" if colon else MASK
    return f"{match['scheme']}{masked}@"


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    if "://" not in text and "=" not in text:
        return text  # the common case, kept cheap: this runs on every log line
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", text)


def without_credentials(url: str) -> str:
    """``url`` with no user or password at all: a link for a browser, which would send a
    masked password (``***``) as a login."""
    return redact(_URL_USERINFO.sub(lambda m: m["scheme"], url))


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key.lower() in SECRET_KEY_NAMES


def redact_value(value: Any) -> Any:
    """``value`` with every string in it redacted: strings, and the keys and values of nested
    dicts, lists, tuples and sets; a dict entry named like a secret (``password``, ``token``)
    has its whole value masked. Other objects are returned as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return redact_mapping(value)
    if type(value) in (list, tuple, set, frozenset):  # exactly: a namedtuple takes no iterable
        return type(value)(redact_value(item) for item in value)
    if isinstance(value, list | tuple | set | frozenset):  # a subclass: its redacted text
        return redact(str(value))
    return value


def redact_mapping(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    """A copy of ``mapping`` (nested) with its credentials masked; see ``redact_value``."""
    return {
        redact_value(key): MASK if _is_secret_key(key) and value else redact_value(value)
        for key, value in mapping.items()
    }


def redact_record(record: logging.LogRecord) -> None:
    """Mask credentials in a log record's message, arguments and traceback, in place.

    The traceback is formatted here, redacted, into ``exc_text``, which formatters print
    instead of formatting the exception again."""
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    elif record.msg is not None:  # log.warning(error): the object renders the message
        text = str(record.msg)
        if redact(text) != text:
            record.msg = redact(text)
    if record.args:
        record.args = (
            redact_mapping(record.args)
            if isinstance(record.args, Mapping)
            else tuple(_redact_arg(arg) for arg in record.args)
        )
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)


def install_log_redaction() -> None:
    """Redact every log record of this process as it is made (idempotent).

    A record factory rather than a handler filter: it reaches every logger and handler,
    including the ones Prefect and uvicorn configure (and reconfigure) after us, and a
    logger's filters would not see the records its children propagate."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "redacts", False):
        return

    def make_redacted_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        with suppress(Exception):  # logging must never raise; an odd argument stays as it is
            redact_record(record)
        return record

    make_redacted_record.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_redacted_record)


def _redact_arg(arg: Any) -> Any:
    """A %-format argument: strings and containers redacted; any other object that renders a
    credential (an exception, a settings object) replaced by its redacted text."""
    if isinstance(arg, str | Mapping | list | tuple | set | frozenset):
        return redact_value(arg)
    if isinstance(arg, int | float | bool) or arg is None:
        return arg
    text = str(arg)
    redacted = redact(text)
    return arg if redacted == text else redacted
