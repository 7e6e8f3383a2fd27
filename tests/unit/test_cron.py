"""params.yaml's crons are checked without Prefect (tasks.core.config.cron); every expression
that check accepts, Prefect's own schedule model accepts too (what its server takes at deploy)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prefect.client.schemas.schedules import CronSchedule

from tasks.core.config import load_params
from tasks.core.config.base import ConfigError
from tasks.core.config.cron import cron_problem
from tests.helpers import REPO_ROOT

COMMON = (
    "0 3 * * 1",
    "* * * * *",
    "*/15 * * * *",
    "0 0 1 jan *",
    "30 2 * * mon-fri",
    "0 9-17/2 * * 1-5",
    "0,30 * 1,15 * *",
    "5 4 * * sun",
    "0 0 * * 7",
    "0 12 31 DEC SAT",
)

# what the check refuses, and the words of its one line
REFUSED = {
    "0 3 * *": "4 fields; expected 5",
    "0 3 * * 1 2": "6 fields",
    "60 * * * *": "minute '60'",
    "* 24 * * *": "hour '24'",
    "* * 0 * *": "day of month '0': '0': values run 1-31",
    "* * * 13 *": "month '13'",
    "* * * * 8": "day of week '8'",
    "* * * foo *": "values run 1-12 or jan-dec",
    "5-1 * * * *": "the range runs backwards",
    "*/0 * * * *": "a step runs 1-59",
    "5/10 * * * *": "a step needs * or a range",
    "* * L * *": "values run 1-31",
    "0 3 ? * 1": "is not *, a value",
    "*-5 * * * *": "* takes no range",
}


def prefect_accepts(expression: str) -> bool:
    try:
        CronSchedule(cron=expression)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("expression", COMMON)
def test_common_crons_pass_and_prefect_takes_them(expression):
    assert cron_problem(expression) is None
    assert prefect_accepts(expression)


@pytest.mark.parametrize("expression, words", REFUSED.items())
def test_a_bad_cron_names_the_field_and_what_was_expected(expression, words):
    problem = cron_problem(expression)
    assert problem is not None and words in problem, problem


# Items of the cron grammar with values in and out of range and names in the wrong field, so
# that the check both accepts and refuses (about a third of the expressions pass it).
VALUE = st.one_of(
    st.integers(1, 7).map(str),  # in every field's range
    st.integers(0, 62).map(str),
    st.sampled_from(("mon", "sun", "jan", "dec", "L")),
)
STEP = st.integers(0, 9).map(lambda step: f"/{step}") | st.integers(0, 65).map(lambda s: f"/{s}")
ITEM = st.one_of(
    st.just("*"),
    STEP.map(lambda step: f"*{step}"),
    VALUE,
    st.tuples(VALUE, VALUE).map("-".join),
    st.tuples(VALUE, VALUE, STEP).map(lambda v: f"{v[0]}-{v[1]}{v[2]}"),
)
FIELD = st.one_of(st.just("*"), st.lists(ITEM, min_size=1, max_size=2).map(",".join))
EXPRESSION = st.one_of(
    st.lists(FIELD, min_size=5, max_size=5), st.lists(FIELD, min_size=4, max_size=6)
).map(" ".join)


@settings(max_examples=400, deadline=None)
@given(EXPRESSION)
def test_whatever_the_check_accepts_prefect_accepts(expression):
    if cron_problem(expression) is None:
        assert prefect_accepts(expression), expression


def test_params_yaml_refuses_a_bad_cron_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_params(REPO_ROOT / "params.yaml", overrides=["schedule.monitor_cron=0 25 * * *"])
    message = str(refused.value)
    assert "schedule.monitor_cron" in message and "hour '25'" in message, message
