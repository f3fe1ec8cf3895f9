"""Forgetting probes that neither the base nor any replay source wrote.

- **Knowledge retention**: 386 short general-knowledge questions written for Stamen, each with its
  accepted answers and its kind (12 kinds: capitals, geography, space, time, numbers, everyday things,
  science, animals, the body, people and their works, language, the world; none over 12% of the probe),
  in ``probe_data/knowledge.jsonl``; none is, word for word or paraphrased, in any data a client trains on
  or a replay source draws from (a test reads them all). The probe keeps the questions the frozen base
  answers correctly (greedy, normalised match), once per base and quantisation (cached); ``retention`` is
  the share of the first :data:`RETENTION_SIZE` of those, taken across kinds in turn, that the model a
  client uses still answers correctly, and each answer is kept on the device (:func:`fact_outcomes`) so
  intervals can run over facts as well as seeds. The base's next known facts (at most :data:`GUARD_SIZE`)
  are the *guard* a device may steer by (``wise-keep-retention``): never the measured ones, so a rule that
  chooses on the guard cannot fit the retention it is judged by.
- **General-text loss**: loss on 40 human-written paragraphs of general prose (``probe_data/general_text.txt``)
  that no client trains on and no replay source draws from.

A probe the base wrote itself would favour a replay source that trains on the base's own answers (``self``
replay); these do not.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources

from stamen.shared.cache import cache_dir, cached_json
from stamen.shared.examples import Example
from stamen.shared.fingerprint import short

from .generation import answers

log = logging.getLogger(__name__)
ANSWER_TOKENS = 12  # short canonical answers: the first sentence decides ("The capital of France is Paris.")
RETENTION_SIZE = 96  # known facts asked each evaluation, taken across kinds in turn: generation is the probe's cost
GUARD_SIZE = 32  # the known facts after those: what a device may choose by, disjoint from what is measured


@dataclass(frozen=True)
class Fact:
    question: str
    answers: tuple[str, ...]  # accepted variants; any one in the reply counts
    kind: str = ""  # what it is about (capital, space, body, ...)


@cache
def facts() -> tuple[Fact, ...]:
    """Every probe fact, taken across kinds in turn (the first of each kind, then the second, ...), so the first
    known facts measured span every kind rather than the file's first."""
    text = resources.files("stamen.client").joinpath("probe_data/knowledge.jsonl").read_text(encoding="utf-8")
    by_kind: dict[str, list[Fact]] = {}
    for row in map(json.loads, filter(None, text.splitlines())):
        by_kind.setdefault(row["kind"], []).append(Fact(row["question"], tuple(row["answers"]), row["kind"]))
    return tuple(fact for layer in itertools.zip_longest(*by_kind.values()) for fact in layer if fact is not None)


@cache
def general_text() -> tuple[Example, ...]:
    """The general-text probe: plain texts, every token scored."""
    text = resources.files("stamen.client").joinpath("probe_data/general_text.txt").read_text(encoding="utf-8")
    return tuple(Example(response=paragraph.strip()) for paragraph in text.split("\n\n") if paragraph.strip())


def normalise(text: str) -> list[str]:
    """Lower case, accents and punctuation removed, articles dropped, digits kept: the words to match."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    words = re.sub(r"[^a-z0-9 ]+", " ", plain.replace("-", " ")).split()
    return [word for word in words if word not in ("a", "an", "the")]


def answered(reply: str, accepted: tuple[str, ...]) -> bool:
    """Whether any accepted answer appears, as whole words, in the reply."""
    words = normalise(reply)
    for answer in accepted:
        wanted = normalise(answer)
        if wanted and any(words[i:i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1)):
            return True
    return False


def correct(model, tokenizer, asked: list[Fact], base_alone: bool = False) -> list[bool]:
    """Which of ``asked`` the model answers correctly (greedy, one left-padded batch)."""
    if not asked:
        return []
    replies = answers(model, tokenizer, [fact.question for fact in asked], ANSWER_TOKENS, base_alone=base_alone)
    return [answered(reply, fact.answers) for reply, fact in zip(replies, asked, strict=True)]


@cache
def probe_version() -> str:
    """A digest of the probe files and settings: cached probe results are valid for this version only."""
    digest = hashlib.sha256(f"{ANSWER_TOKENS}/{RETENTION_SIZE}".encode())
    for name in ("knowledge.jsonl", "general_text.txt"):
        digest.update(resources.files("stamen.client").joinpath(f"probe_data/{name}").read_bytes())
    return digest.hexdigest()[:16]


def known_facts(model, tokenizer, fingerprint: str, quantisation: str) -> tuple[list[Fact], list[Fact]]:
    """The facts the frozen base answers correctly, in :func:`facts`' order: the measured ones (at most
    :data:`RETENTION_SIZE`) and the guard after them (at most :data:`GUARD_SIZE`). Asked once per base and
    quantisation, then read from the cache."""
    every = facts()

    def ask() -> list[int]:
        answered_by_base = correct(model, tokenizer, list(every), base_alone=True)
        known = [i for i, ok in enumerate(answered_by_base) if ok]
        log.debug("the base answers %d of %d probe questions correctly; retention is measured on %d of them, "
                  "%d more guard the choice of alpha", len(known), len(every), min(len(known), RETENTION_SIZE),
                  len(known[RETENTION_SIZE:RETENTION_SIZE + GUARD_SIZE]))
        return known

    cache_file = cache_dir("probes") / f"base-knows-{short(fingerprint)}-{quantisation}-{probe_version()}.json"
    known = [every[i] for i in cached_json(cache_file, ask)]
    return known[:RETENTION_SIZE], known[RETENTION_SIZE:RETENTION_SIZE + GUARD_SIZE]


def retention(model, tokenizer, known: list[Fact]) -> float | None:
    """Share of the base's known facts the model (adapters on) still answers; None when the base knows none."""
    outcomes = fact_outcomes(model, tokenizer, known)
    return sum(outcomes.values()) / len(outcomes) if outcomes else None


def fact_outcomes(model, tokenizer, known: list[Fact]) -> dict[str, bool]:
    """Whether the model (adapters on) still answers each of the base's known facts, by question."""
    return {fact.question: ok for fact, ok in zip(known, correct(model, tokenizer, known), strict=True)}
