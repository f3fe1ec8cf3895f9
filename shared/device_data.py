"""A device's own examples from a file or folder: the data a deployed client trains on.

Accepted: a folder of ``.txt`` files (each blank-line-separated paragraph is one
text), a ``.jsonl`` file of ``{"prompt", "response"}`` or ``{"text"}`` rows, or a
``.csv`` file with ``prompt`` and ``response`` columns or a ``text`` column.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .examples import Example


class DeviceDataError(ValueError):
    """The device's data cannot be read; the message names the file and the problem."""


def read_examples(path: Path) -> list[Example]:
    if path.is_dir():
        examples = [Example(paragraph.strip()) for file in sorted(path.glob("*.txt"))
                    for paragraph in file.read_text(encoding="utf-8").split("\n\n") if paragraph.strip()]
    elif path.suffix == ".jsonl":
        examples = [as_example(row, f"{path}:{number}") for number, row in _json_lines(path)]
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            examples = [
                as_example(row, f"{path}:{number}") for number, row in enumerate(csv.DictReader(handle), start=2)
            ]
    else:
        raise DeviceDataError(f"{path}: expected a folder of .txt files, a .jsonl or a .csv file")
    if not examples:
        raise DeviceDataError(f"{path} holds no examples")
    return examples


def _json_lines(path: Path):
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise DeviceDataError(f"{path}:{number} is not JSON: {error.msg}") from None


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
