"""Versions ``vX.Y.Z`` (DESIGN.md section 2): numeric order, strict parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from javia_core.errors import VersionError
from javia_core.versioning import EXPECTED_FORM, Version

ORDERED = [
    "v0.99.0",
    "v0.100.0",
    "v1.2.9",
    "v1.2.10",
    "v1.9.0",
    "v1.10.0",
    "v9.9.9",
    "v10.0.0",
]

numbers = st.integers(min_value=0, max_value=10**12)


def test_versions_order_numerically_not_as_text() -> None:
    parsed = [Version.parse(text) for text in ORDERED]
    assert parsed == sorted(parsed)
    # Every pair, not only neighbours: the order is total and strict.
    for i, lower in enumerate(parsed):
        for higher in parsed[i + 1 :]:
            assert lower < higher
            assert not higher <= lower
    # Text order would put v1.10.0 before v1.9.0; the version order does not.
    assert sorted(ORDERED) != ORDERED


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3",
        "v1.2",
        "v01.2.3",
        "v1.02.3",
        "v1.2.03",
        " v1.2.3",
        "v1.2.3 ",
        "v1.2.3\n",
        "V1.2.3",
        "v1.2.3-rc1",
        "v1.2.3.4",
        "v\u0661.2.3",  # ARABIC-INDIC DIGIT ONE, a \d digit that is not ASCII
        "v１.2.3",  # FULLWIDTH DIGIT ONE
        "",
        "v",
        "v-1.2.3",
        "v+1.2.3",
        "v1..3",
    ],
)
def test_malformed_versions_are_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(VersionError) as caught:
        Version.parse(text)
    assert EXPECTED_FORM in str(caught.value)
    assert "vX.Y.Z" in str(caught.value)
    assert not Version.is_valid(text)


def test_version_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Version.parse("latest")


def test_a_non_string_is_refused() -> None:
    with pytest.raises(VersionError, match="vX.Y.Z"):
        Version.parse(123)  # type: ignore[arg-type]


@given(numbers, numbers, numbers)
def test_text_round_trips(major: int, minor: int, patch: int) -> None:
    text = f"v{major}.{minor}.{patch}"
    version = Version.parse(text)
    assert str(version) == text
    assert (version.major, version.minor, version.patch) == (major, minor, patch)


@given(st.tuples(numbers, numbers, numbers), st.tuples(numbers, numbers, numbers))
def test_order_equals_tuple_order(left: tuple[int, int, int], right: tuple[int, int, int]) -> None:
    a = Version.parse("v{}.{}.{}".format(*left))
    b = Version.parse("v{}.{}.{}".format(*right))
    assert (a < b) == (left < right)
    assert (a == b) == (left == right)
    assert (a > b) == (left > right)


@given(st.text(max_size=20))
def test_anything_parse_accepts_prints_back_identically(text: str) -> None:
    try:
        version = Version.parse(text)
    except VersionError:
        assert not Version.is_valid(text)
    else:
        assert str(version) == text


def test_bump_moves_to_the_next_release() -> None:
    version = Version.parse("v1.9.9")
    assert str(version.bump("patch")) == "v1.9.10"
    assert str(version.bump("minor")) == "v1.10.0"
    assert str(version.bump("major")) == "v2.0.0"
    assert version.bump("patch") > version
