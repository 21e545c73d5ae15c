"""What a semantic hit must share with the cached question besides a close embedding.

Measured on a labelled set of 266 pairs (`benchmarks/semantic_cache_pairs.py`): with MiniLM
the near misses that need another answer ("flights from Paris to Rome" / "... Rome to
Paris", "read" / "write a JSON file", "order #48213" / "#48231") score up to 0.998, above
every paraphrase (at most 0.975), so no cosine threshold alone keeps wrong answers rare.
The guards check the words themselves:

- ``strict`` (the default): the same content words in the same order (case, punctuation,
  stop words and spacing aside), the same numbers, negations and operators. Safe; it
  catches rewrites of the same wording, not paraphrases.
- ``lexical``: the same numbers, negations and operators, and the words both share in the
  same order (swaps miss; a changed word does not).
- ``none``: the embedding alone.
"""

from __future__ import annotations

import re
from typing import Literal

Guard = Literal["strict", "lexical", "none"]
GUARDS = ("strict", "lexical", "none")
_WORD = re.compile(r"[a-z0-9']+(?:[.-][a-z0-9]+)*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_OPERATOR = re.compile(r"[-+*/^=<>%]")
_STOP_WORDS = """a an the is are was were be been being am do does did of to in on at for
with by as and or but if then so that this these those it its i you we they he she my your
our their me us them what which who whom whose how why when where can could would should will
shall may might must please there here just also what's how's where's who's it's that's
there's i'm you're we're they're i've let's"""
_NEGATION_WORDS = """not no never nor none without don't dont doesn't doesnt isn't isnt
can't cant cannot won't wont didn't didnt aren't wasn't weren't shouldn't couldn't wouldn't
haven't hasn't"""
_STOP = frozenset(_STOP_WORDS.split())
_NEGATIONS = frozenset(_NEGATION_WORDS.split())


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


def _content(text: str) -> list[str]:
    return [w for w in _words(text) if w not in _STOP]


def _signature(text: str) -> tuple[list[str], set[str], list[str]]:
    """Numbers in order, negations, operators in order."""
    negations = {w for w in _words(text) if w in _NEGATIONS}
    return _NUMBER.findall(text), negations, _OPERATOR.findall(text)


def _shared_order(a: list[str], b: list[str]) -> bool:
    def order(words: list[str], other: set[str]) -> list[str]:
        return list(dict.fromkeys(w for w in words if w in other))

    return order(a, set(b)) == order(b, set(a))


def matches(guard: Guard, cached: str, asked: str) -> bool:
    """Whether ``asked`` may get the answer cached for ``cached`` under ``guard``."""
    if guard == "none":
        return True
    if _signature(cached) != _signature(asked):
        return False
    if guard == "strict":
        return _content(cached) == _content(asked)
    return _shared_order(_content(cached), _content(asked))
