"""Find the line of a key in TOML text.

tomllib reports lines only for syntax errors. For a semantic error (a zero budget, an
unknown key) we scan the text for the table header and the key so that the one-line
error still points at the line to edit.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[|\[)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_LINE_IN_MESSAGE = re.compile(r"\(at line (\d+), column \d+\)")


def _normalise(header: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in header.split("."))


def _headers(lines: list[str]) -> list[tuple[int, str, bool]]:
    """(index, dotted name, is_array_of_tables) for every table header."""
    found = []
    for index, line in enumerate(lines):
        match = _HEADER.match(line)
        if match:
            found.append((index, _normalise(match.group(2)), match.group(1) == "[["))
    return found


def _key_pattern(key: str) -> re.Pattern[str]:
    quoted = re.escape(key)
    return re.compile(rf"^\s*(?:{quoted}|\"{quoted}\"|'{quoted}')\s*[=.]")


def find_line(
    text: str, table: str | None = None, key: str | None = None, index: int = 0
) -> int | None:
    """1-based line of ``key`` inside ``table`` (the ``index``-th one for ``[[table]]``).

    ``table=None`` means the top level. Falls back to the table header, then to the
    first line anywhere that sets ``key``; None when nothing matches.
    """
    lines = text.splitlines()
    headers = _headers(lines)
    start, end = 0, len(lines)
    if table is not None:
        matches = [h for h in headers if h[1] == table]
        if index < len(matches):
            start = matches[index][0]
            later = [h[0] for h in headers if h[0] > start]
            end = later[0] if later else len(lines)
        elif "." in table:  # e.g. models.cnn written inline under [models]
            parent, _, child = table.rpartition(".")
            return find_line(text, parent, child) or find_line(text, parent)
        else:
            start = -1
    elif headers:
        end = headers[0][0]
    if start >= 0:
        if key is None:
            return start + 1 if table is not None else None
        pattern = _key_pattern(key)
        for number in range(start, end):
            if pattern.match(lines[number]):
                return number + 1
        if table is not None:
            return start + 1
        for number, name, _ in headers:  # a top-level key written as a table header
            if name == key or name.startswith(f"{key}."):
                return number + 1
    if key is not None:
        pattern = _key_pattern(key)
        for number, line in enumerate(lines):
            if pattern.match(line):
                return number + 1
    return None


def line_of_syntax_error(message: str, text: str = "") -> int | None:
    """The line number inside a tomllib.TOMLDecodeError message, if any."""
    match = _LINE_IN_MESSAGE.search(message)
    if match:
        return int(match.group(1))
    if "end of document" in message and text:
        return len(text.rstrip("\n").splitlines()) or None
    return None
