"""MockJob specs (``rounds=3,search=0.2,...``): checked before a run starts.

The format is sched's (``tvmsched.mockjob.MockSpec``); this module only adapts its
answers to superb's schema messages.
"""

from __future__ import annotations

from typing import Any

from tvmsched.mockjob import MockSpec


def mock_problem(spec: Any) -> str | None:
    """Why a MockJob spec such as 'rounds=3,search=0.2,...' is invalid, or None."""
    if not isinstance(spec, str) or not spec.strip():
        return (
            "expected a string like 'rounds=3,search=0.2,build=0.2,measure=0.1,"
            f"update=0.05', got {spec!r}"
        )
    parsed = parse_mock(spec)
    if isinstance(parsed, str):
        return parsed
    if "rounds" not in parsed:
        return f"'{spec}' lacks rounds=N"
    return None


def parse_mock(spec: str) -> dict[str, Any] | str:
    """The fields a mock spec sets, or a message saying what is wrong with it.

    sched's MockSpec parser is the one definition of the format; superb only keeps the
    fields the text names, so estimates can tell a given value from a default.
    """
    try:
        parsed = MockSpec.parse(spec)
    except ValueError as exc:
        return f"'{spec}': {exc}"
    given = {part.partition("=")[0].strip() for part in spec.split(",")}
    return {key: getattr(parsed, key) for key in given if hasattr(parsed, key)}
