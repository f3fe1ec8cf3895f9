"""A device's own examples from a file or folder: the data a deployed client trains on.

Accepted: a folder of ``.txt`` files (each blank-line-separated paragraph is one
text), a ``.jsonl`` file of ``{"prompt", "response"}`` or ``{"text"}`` rows, or a
``.csv`` file with ``prompt`` and ``response`` columns or a ``text`` column. A ``.jsonl`` is read line by line
(a large file costs its examples' memory, not twice its size); a file over ``LARGE_FILE_BYTES`` is named in a
warning, since the device keeps all its examples in memory while it trains.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from .examples import Example
from .user_errors import UserError

log = logging.getLogger(__name__)
LARGE_FILE_BYTES = 100 * 2**20


class DeviceDataError(UserError, ValueError):
    """The device's data cannot be read; the message names the file and the problem."""


def read_examples(path: Path) -> list[Example]:
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path] if path.is_file() else []
    size = sum(file.stat().st_size for file in files)
    if size > LARGE_FILE_BYTES:
        log.warning("%s holds %.0f MB: the device keeps all its examples in memory while it trains", path, size / 2**20)
    if path.is_dir():
        examples = [Example(paragraph.strip()) for file in files
                    for paragraph in _text(file).split("\n\n") if paragraph.strip()]
    elif path.suffix == ".jsonl":
        examples = [as_example(row, f"{path}:{number}") for number, row in _json_lines(path)]
    elif path.suffix == ".csv":
        rows = csv.DictReader(io.StringIO(_text(path), newline=""))  # quoted fields may hold newlines
        examples = [as_example(row, f"{path}:{number}") for number, row in enumerate(rows, start=2)]
    else:
        raise DeviceDataError(f"{path}: expected a folder of .txt files, a .jsonl or a .csv file")
    if not examples:
        raise DeviceDataError(f"{path} holds no examples")
    return examples


def _json_lines(path: Path):
    """(line number, parsed row) of each non-blank line, read one at a time."""
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DeviceDataError(f"{path}:{number} is not UTF-8 text (byte {error.start} of the line cannot "
                                          "be decoded): convert it, or move it out of the data folder") from None
                if line.strip():
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as error:
                        raise DeviceDataError(f"{path}:{number} is not JSON: {error.msg}") from None
    except OSError as error:
        raise DeviceDataError(f"{path} cannot be read: {error.strerror}") from None


def _text(path: Path) -> str:
    """A data file as UTF-8 text; the error names the file and where, never its bytes (they are private)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DeviceDataError(f"{path} is not UTF-8 text (byte {error.start} cannot be decoded): convert it, "
                              f"or move it out of the data folder") from None
    except OSError as error:
        raise DeviceDataError(f"{path} cannot be read: {error.strerror}") from None


def as_example(row: object, where: str = "example") -> Example:
    """An :class:`Example` from a prompt/response or text mapping, a plain string, or an Example."""
    if isinstance(row, Example):
        return row
    if isinstance(row, str) and row.strip():
        return Example(row)
    if isinstance(row, dict):
        if isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str) and row["response"].strip():
            return Example(row["response"], row["prompt"])
        if isinstance(row.get("text"), str) and row["text"].strip():
            return Example(row["text"])
    raise DeviceDataError(f"{where}: a row needs non-empty 'prompt' and 'response', or 'text'")
