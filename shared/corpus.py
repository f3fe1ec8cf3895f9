"""The embedded default personal data: chatterbot-corpus dialogue topics, one topic per client.

Topics are a natural non-IID split (each client talks about its own subject).
Sizes are very uneven, so topics under ``min_examples`` are merged into groups,
and when more clients are asked for than English groups exist, the corpus's
other languages add clients (then, if still short, the largest groups are halved). Topics in
``BASE_DOMAIN_TOPICS`` and every group no client gets
form the general "base-domain" set that no client trains on and no replay source draws from; disjoint
samples of what is left are the server's FLTrust root set and the anchor-replay set.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from stamen.shared.atomic import atomic_write_text
from stamen.shared.examples import Example
from stamen.shared.user_errors import UserError


class CorpusError(UserError, ValueError):
    """The embedded corpus cannot serve what was asked (more clients than it has topics for)."""


BASE_DOMAIN_TOPICS = ("conversations", "greetings")
BASE_DOMAIN_SIZE = 16
ROOT_SIZE = 16  # the server's own clean examples (FLTrust), apart from clients and the forgetting probe
ANCHOR_SIZE = 32  # the general-domain set the server distributes for anchor replay, apart from the rest


@dataclass(frozen=True)
class ClientDataset:
    """One simulated client's private data."""

    name: str
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]


@dataclass(frozen=True)
class CorpusSplit:
    clients: tuple[ClientDataset, ...]
    base_domain: tuple[Example, ...]
    root: tuple[Example, ...] = ()
    anchor: tuple[Example, ...] = ()


def corpus_folder(language: str = "english") -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded personal data needs the PyPI package chatterbot-corpus")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / language
    if not folder.is_dir():
        raise RuntimeError(f"chatterbot-corpus has no language '{language}'")
    return folder


@lru_cache(maxsize=4)
def load_topics(language: str = "english") -> dict[str, tuple[Example, ...]]:
    """Each topic's consecutive dialogue turns as prompt → response examples."""
    topics = {}
    for path in sorted(corpus_folder(language).glob("*.yml")):
        conversations = yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []
        # a dialogue is a list of turns; a bare string is a mis-indented entry (trivia.yml has one) whose
        # characters would otherwise become one-letter turns
        dialogues = [turns for turns in conversations if isinstance(turns, list)]
        pairs = [(str(turns[i]).strip(), str(turns[i + 1]).strip())
                 for turns in dialogues for i in range(len(turns) - 1)]
        # Some topics repeat dialogues verbatim; a duplicate would leak train data into held-out.
        unique = dict.fromkeys((p, r) for p, r in pairs if p and r)
        examples = [Example(prompt=prompt, response=response) for prompt, response in unique]
        if examples:
            topics[path.stem] = tuple(examples)
    return topics


@lru_cache(maxsize=16)
def natural_split(
    num_clients: int, seed: int = 0, min_examples: int = 40, heldout_fraction: float = 0.2, max_heldout: int = 16
) -> CorpusSplit:
    """Deterministic topic-per-client split (every process computes the same one).

    English topics come first, largest first; more clients take the corpus's other
    languages' topics (``language/topic``); beyond those, the largest groups are halved.
    """
    topics = load_topics()
    ranked, english_groups = _topic_groups(num_clients, min_examples)
    if len(ranked) < num_clients:
        raise CorpusError(f"the embedded corpus supports at most {len(ranked)} clients of >= {min_examples} examples, "
                          f"not {num_clients}: use fewer clients or your own data (configuration key 'dataset')")
    rng = random.Random(seed)
    clients = []
    for name, examples in ranked[:num_clients]:
        shuffled = list(examples)
        rng.shuffle(shuffled)
        n_heldout = min(max_heldout, max(1, int(len(shuffled) * heldout_fraction)))
        clients.append(ClientDataset(name, tuple(shuffled[n_heldout:]), tuple(shuffled[:n_heldout])))
    spare = [e for k in BASE_DOMAIN_TOPICS if k in topics for e in topics[k]]
    spare += [e for _, examples in ranked[num_clients:english_groups] for e in examples]
    base_domain = tuple(rng.sample(spare, min(BASE_DOMAIN_SIZE, len(spare))))
    rest = [e for e in spare if e not in set(base_domain)]
    root = tuple(rng.sample(rest, min(ROOT_SIZE, len(rest))))
    rest = [e for e in rest if e not in set(root)]
    anchor = tuple(rng.sample(rest, min(ANCHOR_SIZE, len(rest))))
    return CorpusSplit(tuple(clients), base_domain, root, anchor)


@lru_cache(maxsize=16)
def _topic_groups(num_clients: int, min_examples: int) -> tuple[list[tuple[str, tuple[Example, ...]]], int]:
    """Up to ``num_clients`` topic groups of >= ``min_examples`` examples (fewer if the corpus runs
    out), and how many of them are English topics."""
    topics = load_topics()
    ranked = _ranked(_merge_small({k: v for k, v in topics.items() if k not in BASE_DOMAIN_TOPICS}, min_examples))
    english_groups = len(ranked)
    for language in sorted(p.name for p in corpus_folder().parent.iterdir() if p.is_dir() and p.name != "english"):
        if len(ranked) >= num_clients:
            break
        groups = _merge_small(load_topics(language), min_examples)
        ranked += [
            (f"{language}/{name}", examples) for name, examples in _ranked(groups) if len(examples) >= min_examples
        ]
    while len(ranked) < num_clients:
        name, examples = max(ranked, key=lambda item: len(item[1]))
        if len(examples) < 2 * min_examples:
            break
        half = len(examples) // 2
        ranked.remove((name, examples))
        ranked += [(f"{name}#1", examples[:half]), (f"{name}#2", examples[half:])]
    return ranked, english_groups


def natural_capacity(min_examples: int = 40) -> int:
    """The most clients the natural split can give a topic group each."""
    return len(_topic_groups(10**6, min_examples)[0])


def _ranked(groups: dict[str, tuple[Example, ...]]) -> list[tuple[str, tuple[Example, ...]]]:
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


def _merge_small(topics: dict[str, tuple[Example, ...]], min_examples: int) -> dict[str, tuple[Example, ...]]:
    groups = {k: v for k, v in topics.items() if len(v) >= min_examples}
    pending_name, pending = [], []
    for name, examples in sorted(topics.items(), key=lambda item: (-len(item[1]), item[0])):
        if len(examples) >= min_examples:
            continue
        pending_name.append(name)
        pending.extend(examples)
        if len(pending) >= min_examples:
            groups["+".join(pending_name)] = tuple(pending)
            pending_name, pending = [], []
    if pending:  # leftovers join the last merged group (or stand alone if none)
        last = next((k for k in reversed(groups) if "+" in k), None)
        if last is None:
            groups["+".join(pending_name)] = tuple(pending)
        else:
            groups[f"{last}+{'+'.join(pending_name)}"] = groups.pop(last) + tuple(pending)
    return groups


def write_device_files(folder: Path, devices: int, seed: int = 0) -> list[tuple[Path, str]]:
    """``device-N.jsonl`` with the prompt/response rows of the natural split's N-th client, and its topic."""
    written = []
    for number, client in enumerate(natural_split(devices, seed).clients, start=1):
        rows = [{"prompt": e.prompt, "response": e.response} for e in (*client.train, *client.heldout)]
        path = folder / f"device-{number}.jsonl"
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
        written.append((path, client.name))
    return written
