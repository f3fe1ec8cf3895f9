"""The rows a simulation deals out: a local Hugging Face ``datasets`` source, or the embedded corpus as one.

``dataset = PATH`` names a folder written by ``Dataset.save_to_disk`` or a ``.jsonl``/``.json``/``.csv``/
``.parquet`` file; ``dataset-columns`` maps Stamen's fields to its columns ("prompt=question,response=answer",
"text=body", or "messages=conversation" for a chat column of ``{"role", "content"}`` turns, whose last
assistant turn is the response and whose earlier turns go through the base's chat template). Nothing is
fetched: a path that is not on this machine is an error naming it.

The embedded corpus is the same kind of dataset: one row per dialogue turn with the natural split's topic
group in a ``topic`` column, so the flwr-datasets partitioners deal it like any other.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import datasets
import pandas

from stamen.shared.config import ConfigError
from stamen.shared.corpus import natural_split
from stamen.shared.examples import Example

READERS = {  # text stays text: no column is guessed to be numbers or dates
    ".jsonl": lambda path: pandas.read_json(path, lines=True, dtype=False, convert_dates=False),
    ".json": lambda path: pandas.read_json(path, dtype=False, convert_dates=False),
    ".csv": lambda path: pandas.read_csv(path, dtype=str, keep_default_na=False),
    ".parquet": pandas.read_parquet,
}
EMBEDDED_GROUP = "topic"  # the embedded dataset's natural id: a client's topic group


class DatasetError(ConfigError):
    """A dataset cannot be read or lacks a column it was asked for; the message names which."""


@lru_cache(maxsize=4)
def load_rows(path: str) -> datasets.Dataset:
    """The dataset at ``path`` (a ``save_to_disk`` folder, memory-mapped; or one data file, read into memory so
    that no copy of private rows lands in a cache), read locally."""
    source = Path(path).expanduser()
    if source.is_dir():
        if not (source / "dataset_info.json").is_file():
            raise DatasetError(f"dataset {path}: a folder must be one written by Dataset.save_to_disk "
                               "(dataset_info.json is missing); or name a .jsonl, .csv or .parquet file")
        loaded = datasets.load_from_disk(str(source))
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise DatasetError(f"dataset {path} has splits {sorted(loaded)} and no 'train' split to deal out")
            loaded = loaded["train"]
        return loaded
    if not source.is_file():
        raise DatasetError(f"dataset {path} does not exist on this machine")
    if source.suffix not in READERS:
        raise DatasetError(f"dataset {path}: expected a save_to_disk folder or one of {sorted(READERS)}")
    try:
        table = READERS[source.suffix](source)
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"dataset {path} cannot be read as {source.suffix[1:]}: {error}") from None
    return datasets.Dataset.from_pandas(table, preserve_index=False)


def to_examples(rows: datasets.Dataset, columns: dict[str, str]) -> list[Example]:
    """Each row as an Example: a chat (messages column), a prompt/response pair, or a text, in that order of
    preference by which columns the dataset has."""
    names = set(rows.column_names)
    if columns["messages"] in names:
        return [_chat(turns, f"row {i}") for i, turns in enumerate(rows[columns["messages"]])]
    if {columns["prompt"], columns["response"]} <= names:
        return [_pair(prompt, response, f"row {i}")
                for i, (prompt, response) in enumerate(zip(rows[columns["prompt"]], rows[columns["response"]],
                                                           strict=True))]
    if columns["text"] in names:
        return [_pair(None, text, f"row {i}") for i, text in enumerate(rows[columns["text"]])]
    raise DatasetError(f"the dataset's columns {sorted(names)} have none of messages={columns['messages']!r}, "
                       f"prompt={columns['prompt']!r} with response={columns['response']!r}, or "
                       f"text={columns['text']!r}: map them with dataset-columns")


def _pair(prompt: object, response: object, where: str) -> Example:
    if not isinstance(response, str) or not response.strip() or not (prompt is None or isinstance(prompt, str)):
        raise DatasetError(f"dataset {where}: the response or text must be a non-empty string")
    return Example(response, prompt)


def _chat(turns: object, where: str) -> Example:
    """A conversation: its last turn (the assistant's) is the response, the user turn before it the prompt."""
    if not isinstance(turns, list) or len(turns) < 2 or not all(
            isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str)
            for t in turns):
        raise DatasetError(f"dataset {where}: messages must be a list of at least two {{role, content}} turns")
    *earlier, prompt, response = turns
    if response["role"] != "assistant" or prompt["role"] != "user":
        raise DatasetError(f"dataset {where}: a conversation must end with a user turn and the assistant's reply")
    return Example(response["content"], prompt["content"],
                   tuple((turn["role"], turn["content"]) for turn in earlier))


@lru_cache(maxsize=16)
def embedded_dataset(groups: int, seed: int = 0) -> datasets.Dataset:
    """The embedded corpus as ``groups`` topic groups of the natural split, one row per example, the group in
    the ``topic`` column, each group's training examples before its held-out ones (a partition holds out its
    last rows, so a natural partition is cut as the natural split cut it)."""
    clients = natural_split(groups, seed).clients
    rows = [(client.name, e) for client in clients for e in (*client.train, *client.heldout)]
    return datasets.Dataset.from_dict({
        "prompt": [e.prompt for _, e in rows], "response": [e.response for _, e in rows],
        EMBEDDED_GROUP: [name for name, _ in rows]})
