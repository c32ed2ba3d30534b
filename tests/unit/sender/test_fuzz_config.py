"""Fuzzing the config loader: whatever the file holds, it loads or is refused with
`ConfigError` (whose message names the bad field), never another exception that would end the
process with a traceback instead of the "invalid config" line and exit code 2 (`service.run`),
or end a reload instead of keeping the last good config.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pydantic
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mailfleet_sender import config

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FULL = config.SenderConfig().model_dump(mode="json", by_alias=True)
"""Every field with its default: the skeleton the mutations start from, so they reach the
validators of nested fields rather than stopping at an unknown top-level key."""

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["0s", "-1s", "1e400s", "5m", "100/s", "1/0", "3d", "abc", "10.0.0.1",
                     "::1", "999999999999999999999h", "", "nan", "inf", "0/m", "1.5.6.7"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


PATHS = [p for p in _paths(FULL) if p]


@st.composite
def mutated_config(draw: st.DrawFn) -> dict[str, Any]:
    """The full default config with a few fields (or whole sections) replaced by anything."""
    data = copy.deepcopy(FULL)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(PATHS))
        node: Any = data
        try:
            for step in path[:-1]:
                node = node[step]
            node[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed this path
    return data


def _load(text: str) -> config.SenderConfig | None:
    try:
        return config.parse_config(text)
    except config.ConfigError as exc:
        assert str(exc), "a refusal says what is wrong"
        return None


@FUZZ
@given(data=mutated_config())
def test_any_mapping_loads_or_is_refused_with_config_error(data: dict[str, Any]) -> None:
    loaded = _load(yaml.safe_dump(data))
    try:
        direct = config.SenderConfig.model_validate(data)
    except pydantic.ValidationError:
        direct = None
    assert (loaded is None) == (direct is None)
    if loaded is not None:
        # What loads dumps back to a config that loads the same (the operator round-trips it).
        assert config.parse_config(config.dump_config(loaded)) == loaded


@FUZZ
@given(text=st.one_of(
    st.text(max_size=300),
    st.builds(lambda v: yaml.safe_dump(v), json_values),
    st.builds(lambda v: json.dumps(v, allow_nan=True), json_values),
))
@example(text="[" * 2000 + "]" * 2000)
@example(text="a: &x [1]\nb: *x\nsubmission: *x\n")
@example(text="submission: !!python/object:os.system {}\n")
@example(text="\x00")
@example(text="retry: {schedule: [1e400s]}\n")
def test_any_text_loads_or_is_refused_with_config_error(text: str) -> None:
    _load(text)


def test_a_file_that_cannot_be_read_is_a_config_error(tmp_path: Any) -> None:
    bad = tmp_path / "sender.yaml"
    bad.write_bytes(b"pool: \xff\xfe\n")
    try:
        config.load_config(bad)
    except config.ConfigError as exc:
        assert "cannot read" in str(exc)
    else:
        raise AssertionError("undecodable bytes loaded")
