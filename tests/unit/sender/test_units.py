"""Durations and rates read the same way everywhere, and bad ones say what is expected."""

from __future__ import annotations

import datetime

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailfleet_sender import units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("500ms", 0.5, id="milliseconds"),
        pytest.param("30s", 30, id="seconds"),
        pytest.param("10m", 600, id="minutes"),
        pytest.param("1h30m", 5400, id="hours and minutes combine"),
        pytest.param("90d", 90 * 86400, id="days"),
        pytest.param("2w", 14 * 86400, id="weeks"),
        pytest.param("1.5h", 5400, id="a decimal number of hours"),
        pytest.param("0s", 0, id="zero"),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert units.parse_duration(text) == datetime.timedelta(seconds=seconds)
    assert units.duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "10 m", "m", "-5m", "1y", "10M", " 5m", "5m "])
def test_parse_duration_refuses_with_the_expected_format(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*expected a duration.*'1h30m'"):
        units.parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.25, "250ms"), (5400, "1h30m"), (90 * 86400, "90d"), (90061, "1d1h1m1s")],
)
def test_format_duration_is_canonical(seconds: float, text: str) -> None:
    assert units.format_duration(datetime.timedelta(seconds=seconds)) == text
    assert units.format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**10))
def test_format_then_parse_round_trips(millis: int) -> None:
    delta = datetime.timedelta(milliseconds=millis)
    assert units.parse_duration(units.format_duration(delta)) == delta


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        pytest.param("100/s", 100, id="per second"),
        pytest.param("5000/h", 5000 / 3600, id="per hour"),
        pytest.param("10/m", 10 / 60, id="per minute"),
        pytest.param("20000/d", 20000 / 86400, id="per day"),
        pytest.param("300/5m", 1, id="per multi-unit period"),
        pytest.param("0.5/s", 0.5, id="a fractional count"),
    ],
)
def test_parse_rate(text: str, per_second: float) -> None:
    rate = units.parse_rate(text)
    assert rate.per_second == pytest.approx(per_second)
    assert units.parse_rate(str(rate)) == rate


def test_rate_is_typed() -> None:
    rate = units.parse_rate("5000/h")
    assert rate == units.Rate(count=5000, per=datetime.timedelta(hours=1))
    assert rate.interval == datetime.timedelta(seconds=0.72)
    assert str(rate) == "5000/h"


@pytest.mark.parametrize("text", ["100", "100/", "/s", "100/sec", "100 /s", "fast", "0/s"])
def test_parse_rate_refuses_with_the_expected_format(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid rate .*'100/s'|count must be greater"):
        units.parse_rate(text)


class _Config(pydantic.BaseModel):
    timeout: units.Duration
    rate: units.RateStr


def test_annotated_types_keep_the_text_as_written() -> None:
    config = _Config(timeout="1h30m", rate="100/s")
    assert config.model_dump() == {"timeout": "1h30m", "rate": "100/s"}


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("timeout", "90 minutes", "expected a duration"),
        ("timeout", 90, "a duration must be a string"),
        ("rate", "100 per second", "expected a rate"),
    ],
)
def test_annotated_types_refuse_with_the_field_and_the_format(
    field: str, value: object, words: str
) -> None:
    good = {"timeout": "1m", "rate": "1/s"}
    with pytest.raises(pydantic.ValidationError) as exc:
        _Config.model_validate({**good, field: value})
    (error,) = exc.value.errors()
    assert error["loc"] == (field,)
    assert words in error["msg"]


def test_json_schema_carries_the_pattern_for_api_servers() -> None:
    props = _Config.model_json_schema()["properties"]
    assert props["timeout"]["pattern"] == units.DURATION_PATTERN
    assert props["rate"]["pattern"] == units.RATE_PATTERN


@given(st.from_regex(units.RATE_PATTERN, fullmatch=True))
def test_every_rate_the_schema_pattern_accepts_parses(text: str) -> None:
    try:
        rate = units.parse_rate(text)
    except ValueError as exc:  # periods beyond what timedelta holds (millions of years,
        assert "too long" in str(exc) or "too short" in str(exc)  # or under a microsecond)
    else:
        assert rate.per_second > 0


def test_a_rate_whose_period_rounds_to_nothing_is_refused_not_divided_by_zero() -> None:
    with pytest.raises(ValueError, match="too short"):
        units.parse_rate("1/0.0001ms")


@given(st.from_regex(units.DURATION_PATTERN, fullmatch=True))
def test_every_duration_the_schema_pattern_accepts_parses(text: str) -> None:
    try:
        delta = units.parse_duration(text)
    except ValueError as exc:
        assert "too long" in str(exc)
    else:
        assert delta >= datetime.timedelta(0)
