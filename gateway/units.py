"""Sizes and durations as administrators write them in the config.

``10485760`` or ``"10MiB"``; ``300`` or ``"5m"``, ``"24h"``, ``"5d"``.  One
definition for the main schema (gateway.config) and the storage backends'
(gateway.storage.settings), so both accept and refuse the same spellings.
"""
from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NUMBER_UNIT = re.compile(r"\s*(\d+)\s*([a-zA-Z]*)\s*")


def parse_size(value: Any) -> Any:
    """Bytes from 10485760 or "10MiB"; other types are left for the int check."""
    if isinstance(value, str):
        m = _NUMBER_UNIT.fullmatch(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        raise ValueError("expected a size in bytes, such as 10485760 or \"10MiB\"")
    return value


def parse_duration(value: Any) -> Any:
    """Seconds from 300 or "5m", "24h", "5d"."""
    if isinstance(value, str):
        m = _NUMBER_UNIT.fullmatch(value)
        if m and m.group(2).lower() in _DURATION_UNITS:
            return int(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
        raise ValueError("expected a duration in seconds, such as 300 or \"5m\", \"24h\", \"5d\"")
    return value


Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Duration = Annotated[int, BeforeValidator(parse_duration), Field(ge=0)]
