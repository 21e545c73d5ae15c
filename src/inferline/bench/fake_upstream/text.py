"""The canonical answer, its words, and how a continuation request is matched against it.

Every healthy answer is the first N words of one fixed text, one word per token. Each word is
distinct (case and punctuation aside), so a truncated, duplicated or missing word is visible
in the assembled text. Past the built-in words, word ``i`` (0-based) is the built-in word
``i % 98`` stripped of punctuation with ``i // 98 + 1`` appended (``fox2``), still distinct.

Joining rule: the answer is the words joined by single spaces; every word chunk after the
first carries its leading space (``"Quietly,"``, ``" the"``, ``" amber"`` ...). A
continuation of a prefix of ``m`` words sends words ``m+1 ...``; its first chunk has a
leading space unless the prefix is empty or ends in whitespace, so ``PREFIX + continuation``
is exactly the canonical text when PREFIX is the canonical text's first ``m`` words
(optionally followed by whitespace; the whole text plus whitespace gets an empty answer).
"""

from __future__ import annotations

import re

_BUILTIN = (
    "Quietly, the amber fox crossed a frozen river before dawn. Seven lanterns glowed above "
    "wooden bridges while distant bells announced morning. Curious children gathered smooth "
    "stones near ancient walls; their laughter echoed through narrow streets. Meanwhile, "
    "patient fishermen repaired torn nets under pale skies. Every baker opened heavy doors, "
    "releasing warm scents of cinnamon bread. Travelers paused, tasting sweet figs beside "
    "quiet fountains, and old poets wrote letters nobody would ever read. Finally, golden "
    "light spilled across rooftops, gardens, markets, chapels, harbors, orchards, meadows. "
    "Then silver clouds drifted slowly westward, carrying rumors toward forgotten mountains "
    "where eagles nested."
)
BUILTIN_WORDS: tuple[str, ...] = tuple(_BUILTIN.split())
DEFAULT_WORDS = 60


def canonical_words(n: int = DEFAULT_WORDS) -> tuple[str, ...]:
    """The first ``n`` words of the canonical answer (all distinct)."""
    if n < 1:
        raise ValueError("the canonical text needs at least one word")
    size = len(BUILTIN_WORDS)
    out = list(BUILTIN_WORDS[:n])
    for i in range(size, n):
        base = re.sub(r"[^A-Za-z]", "", BUILTIN_WORDS[i % size])
        out.append(f"{base}{i // size + 1}")
    return tuple(out)


def canonical_text(n: int = DEFAULT_WORDS) -> str:
    """The canonical answer of ``n`` words, joined by single spaces."""
    return " ".join(canonical_words(n))


def count_words(text: str) -> int:
    """Whitespace-separated words in ``text`` (the fake's token count)."""
    return len(text.split())


def needs_space(prefix: str) -> bool:
    """Whether a continuation of ``prefix`` starts with a space (see the joining rule)."""
    return bool(prefix) and not prefix[-1].isspace()


class Canon:
    """The canonical words of one server, with lookups for continuations."""

    def __init__(self, n: int = DEFAULT_WORDS) -> None:
        self.words = canonical_words(n)
        self.text = " ".join(self.words)
        self._index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def chat_prefix_words(self, prefix: str) -> int | None:
        """How many canonical words ``prefix`` holds, or None if it is not a word prefix."""
        words = prefix.split()
        if tuple(words) != self.words[: len(words)]:
            return None
        return len(words)

    def prompt_tail_words(self, prompt: str) -> int:
        """For /v1/completions: canonical words the prompt ends with (0 when none).

        If the prompt's last word is canonical word ``j`` (1-based) and the prompt's last
        ``j`` words are the first ``j`` canonical words, the prompt is a continuation of
        ``j`` words; otherwise it is a fresh request (0). Words are distinct, so ``j`` is
        unique.
        """
        words = prompt.split()
        j = self._index.get(words[-1]) if words else None
        if j is None:
            return 0
        return j + 1 if tuple(words[-(j + 1) :]) == self.words[: j + 1] else 0
