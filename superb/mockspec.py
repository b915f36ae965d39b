"""MockJob specs (``rounds=3,search=0.2,...``): checked before a run starts.

sched's own parser has the last word where sched is installed; the local parser lets
validation and time estimates work without it.
"""

from __future__ import annotations

import math
from typing import Any

# MockJob spec fields (sched.mockjob.MockSpec): numbers, and fields with fixed choices.
MOCK_NUMBERS = {
    "rounds": int,
    "prepare": float,
    "search": float,
    "build": float,
    "measure": float,
    "update": float,
    "finalize": float,
    "jitter": float,
    "seed": int,
    "workers": int,
}
MOCK_CHOICES = {"cpu": ("burn", "sleep"), "device": ("any", "gpu", "cpu")}


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
    from . import schedapi

    try:  # sched's own parser has the last word where it is installed
        schedapi.module("mockjob").MockSpec.parse(spec)
    except schedapi.SchedUnavailable:
        pass
    except ValueError as exc:
        return f"'{spec}': {exc}"
    return None


def parse_mock(spec: str) -> dict[str, Any] | str:
    """The fields of a mock spec, or a message saying what is wrong with it."""
    fields: dict[str, Any] = {}
    for part in spec.split(","):
        key, sep, value = (p.strip() for p in part.partition("="))
        if key in MOCK_CHOICES and sep:
            if value not in MOCK_CHOICES[key]:
                return f"'{key}={value}' in '{spec}': choose one of {', '.join(MOCK_CHOICES[key])}"
            fields[key] = value
            continue
        if not sep or key not in MOCK_NUMBERS:
            known = ", ".join(f"{k}=..." for k in [*MOCK_NUMBERS, *MOCK_CHOICES])
            return f"'{part.strip()}' in '{spec}' is not one of {known}"
        try:
            number = MOCK_NUMBERS[key](value)
        except ValueError:
            return f"'{key}={value}' in '{spec}' is not a number"
        if not math.isfinite(number) or number < 0 or (key == "rounds" and number == 0):
            return f"'{key}={value}' in '{spec}' must be positive"
        fields[key] = number
    return fields
