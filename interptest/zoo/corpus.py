"""Synthetic corpus for the reference model ``interptest-tiny``.

The corpus teaches three behaviors plus generic induction:

* **name copying (induction)** -- "Her name was Alex Hart. When Alex Hart smiled." and the two-person
  variant "Their names were Iris Jones and James Dixon. When James Dixon ...";
* **indirect object identification** -- "When Mary and John went to the store, John gave a drink to Mary.";
* **factual recall** -- "The capital of France is Paris." for every country in ``lexicons/countries.txt``;
* **repeated random-token spans** drawn from the whole vocabulary (special tokens excluded) -- added by
  the training script at the token level, see :func:`random_repeat_segment`;

mixed with varied filler sentences.

Held-out combinations (never generated for training, used by :mod:`interptest.zoo.evaluate`):

* name copying: an *ordered* (first, last) pair is held out when ``crc32("first|last") % 10 == 0``, plus
  the pairs of the shipped prompts (Alex Hart, Iris Jones, James Dixon).  Training never puts a held-out
  pair together; two-person sentences use two training pairs.
* IOI: an *unordered* pair {A, B} is held out when ``crc32("ioi|" + sorted pair) % 10 == 0``, plus
  {Mary, John}.  Training never puts a held-out pair in one IOI sentence.
* facts cannot be held out as facts (a model cannot know a capital it never saw); what is held out is the
  context: evaluation asks both the bare prompt and the prompt after an introduction of a held-out name
  pair, a combination that does not occur in training.

Names may fill either slot: half the people are drawn as (first name, surname), half from the union of
both lists in any slot, so the copying mechanism cannot depend on which list a name came from.
"""

from __future__ import annotations

import random
import zlib
from functools import cache
from importlib import resources

LEXICON_FILES = ("names", "surnames", "countries", "capitals", "objects", "places")


@cache
def lexicon(name: str) -> tuple[str, ...]:
    """Entries of ``interptest/lexicons/<name>.txt`` (one per line, blank lines ignored)."""
    text = resources.files("interptest").joinpath("lexicons", f"{name}.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def facts() -> tuple[tuple[str, str], ...]:
    """(country, capital) pairs, aligned line by line in countries.txt / capitals.txt."""
    countries, capitals = lexicon("countries"), lexicon("capitals")
    if len(countries) != len(capitals):
        raise ValueError("countries.txt and capitals.txt must have the same number of lines")
    return tuple(zip(countries, capitals))


def all_lexicon_words() -> list[str]:
    """Every word that must be a single (leading-space) token."""
    words: list[str] = []
    for name in LEXICON_FILES:
        words.extend(lexicon(name))
    return sorted(set(words))


def person_pool() -> tuple[str, ...]:
    return tuple(sorted(set(lexicon("names")) | set(lexicon("surnames"))))


# ---------------------------------------------------------------- held-out combinations

SHIPPED_INDUCTION_PAIRS = frozenset({("Alex", "Hart"), ("Iris", "Jones"), ("James", "Dixon")})
SHIPPED_IOI_PAIRS = frozenset({frozenset({"Mary", "John"})})


def _h(s: str) -> int:
    return zlib.crc32(s.encode("utf-8"))


def induction_pair_held_out(first: str, last: str) -> bool:
    return (first, last) in SHIPPED_INDUCTION_PAIRS or _h(f"{first}|{last}") % 10 == 0


def ioi_pair_held_out(a: str, b: str) -> bool:
    x, y = sorted((a, b))
    return frozenset({a, b}) in SHIPPED_IOI_PAIRS or _h(f"ioi|{x}|{y}") % 10 == 0


# ---------------------------------------------------------------- sentence pieces

INTROS_ONE = (
    "Her name was",
    "His name was",
    "My friend is",
    "The new teacher was",
    "I met",
    "We saw",
    "This is",
    "The winner was",
    "Our guest was",
    "The doctor is",
)
INTROS_TWO = ("Their names were", "The two friends were", "We met", "The guests were", "I saw")
CONNECTORS = ("When", "Later", "Then", "After that", "Yesterday", "Today", "Soon", "Once")
VERB_PHRASES = (
    "smiled",
    "went home",
    "said hello",
    "left early",
    "was happy",
    "sat down",
    "laughed",
    "called a friend",
    "ate lunch",
    "read a book",
    "took a walk",
    "felt tired",
    "won the game",
    "waved",
    "got up",
    "came back",
)
TRANSFER_VERBS = ("gave", "handed", "passed", "sent", "brought", "showed", "threw", "lent")
IOI_OPENERS = ("When", "After", "While", "Then, when", "Once")
IOI_MOTION = ("went to", "arrived at", "walked to", "were at", "got to")

SUBJECTS = (
    "The dog",
    "A man",
    "The teacher",
    "My neighbor",
    "The child",
    "A woman",
    "The farmer",
    "The old cat",
    "Our team",
    "The driver",
    "A student",
    "The baker",
    "Everyone",
    "The bird",
)
VERBS = (
    "saw",
    "liked",
    "found",
    "lost",
    "wanted",
    "cleaned",
    "painted",
    "moved",
    "bought",
    "opened",
    "carried",
    "fixed",
    "needed",
    "dropped",
    "watched",
)
ADJECTIVES = (
    "cold",
    "warm",
    "quiet",
    "busy",
    "bright",
    "dark",
    "small",
    "large",
    "green",
    "old",
    "new",
    "happy",
    "calm",
    "wet",
    "long",
    "short",
    "strange",
    "simple",
)
TIMES = (
    "today",
    "yesterday",
    "in the morning",
    "at night",
    "last week",
    "after lunch",
    "every day",
    "on Monday",
    "in the evening",
    "before dinner",
)
NOUNS = (
    "weather",
    "room",
    "road",
    "sky",
    "house",
    "garden",
    "city",
    "water",
    "music",
    "food",
    "street",
    "window",
    "door",
    "tree",
    "car",
    "train",
    "rain",
    "wind",
    "table",
    "chair",
)


class Generator:
    """Deterministic sentence/document generator (all randomness from one ``random.Random``)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.first = lexicon("names")
        self.last = lexicon("surnames")
        self.pool = person_pool()
        self.facts = facts()
        self.objects = lexicon("objects")
        self.places = lexicon("places")

    # -- people
    def _person(self, used: set[str], held_out: bool = False) -> tuple[str, str]:
        rng = self.rng
        while True:
            if rng.random() < 0.5:
                a, b = rng.choice(self.first), rng.choice(self.last)
            else:
                a, b = rng.choice(self.pool), rng.choice(self.pool)
            if a == b or a in used or b in used:
                continue
            if induction_pair_held_out(a, b) != held_out:
                continue
            used.update((a, b))
            return a, b

    def _name(self, used: set[str]) -> str:
        while True:
            a = self.rng.choice(self.pool)
            if a not in used:
                used.add(a)
                return a

    # -- sentences (training)
    def induction_one(self, used: set[str]) -> str:
        r = self.rng
        a, b = self._person(used)
        return f"{r.choice(INTROS_ONE)} {a} {b}. {r.choice(CONNECTORS)} {a} {b} {r.choice(VERB_PHRASES)}."

    def induction_two(self, used: set[str]) -> str:
        r = self.rng
        p, q = self._person(used), self._person(used)
        first, second = (p, q) if r.random() < 0.5 else (q, p)
        return (
            f"{r.choice(INTROS_TWO)} {p[0]} {p[1]} and {q[0]} {q[1]}. {r.choice(CONNECTORS)} "
            f"{first[0]} {first[1]} {r.choice(VERB_PHRASES)}, and {second[0]} {second[1]} "
            f"{r.choice(VERB_PHRASES)}."
        )

    def ioi(self, used: set[str]) -> str:
        r = self.rng
        while True:
            a, b = self._name(set(used)), self._name(set(used))
            if a != b and not ioi_pair_held_out(a, b):
                break
        used.update((a, b))
        s, io = (b, a) if r.random() < 0.5 else (a, b)  # subject repeats, indirect object is the other
        return (
            f"{r.choice(IOI_OPENERS)} {a} and {b} {r.choice(IOI_MOTION)} the {r.choice(self.places)}, "
            f"{s} {r.choice(TRANSFER_VERBS)} a {r.choice(self.objects)} to {io}."
        )

    def fact(self) -> str:
        r = self.rng
        country, capital = r.choice(self.facts)
        k = r.random()
        if k < 0.7:
            return f"The capital of {country} is {capital}."
        if k < 0.85:
            return f"{capital} is the capital of {country}."
        return f"The capital city of {country} is {capital}."

    def filler(self, used: set[str]) -> str:
        r = self.rng
        k = r.randrange(6)
        if k == 0:
            return f"The {r.choice(NOUNS)} was {r.choice(ADJECTIVES)} {r.choice(TIMES)}."
        if k == 1:
            return f"{r.choice(SUBJECTS)} {r.choice(VERBS)} the {r.choice(self.objects)} {r.choice(TIMES)}."
        if k == 2:
            return f"It was a {r.choice(ADJECTIVES)} day at the {r.choice(self.places)}."
        if k == 3:
            return f"{self._name(used)} {r.choice(VERBS)} a {r.choice(ADJECTIVES)} {r.choice(self.objects)}."
        if k == 4:
            return f"{r.choice(SUBJECTS)} {r.choice(VERB_PHRASES)} near the {r.choice(self.places)}."
        return f"The {r.choice(self.objects)} in the {r.choice(NOUNS)} looked {r.choice(ADJECTIVES)}."

    def sentence(self, used: set[str]) -> str:
        k = self.rng.random()
        if k < 0.22:
            return self.induction_one(used)
        if k < 0.40:
            return self.induction_two(used)
        if k < 0.64:
            return self.ioi(used)
        if k < 0.80:
            return self.fact()
        return self.filler(used)

    def document(self, n_sentences: int) -> str:
        used: set[str] = set()
        return " ".join(self.sentence(used) for _ in range(n_sentences))


def tokenizer_training_text(
    seed: int, n_docs: int, lexicon_repeats: int = 40, generator: type[Generator] = Generator
) -> list[str]:
    """Text for training the BPE: corpus documents plus every lexicon word repeated (as " Word")."""
    g = generator(seed)
    docs = [g.document(6) for _ in range(n_docs)]
    words = all_lexicon_words()
    docs.extend(" " + " ".join([w] * lexicon_repeats) for w in words)
    return docs


def random_repeat_segment(rng: random.Random, token_ids: list[int], min_len: int, max_len: int, room: int) -> list[int]:
    """A span of uniformly random tokens (from ``token_ids``: the whole vocabulary minus special tokens)
    followed by one or two exact repeats, cut to ``room`` tokens."""
    n = rng.randint(min_len, max_len)
    span = [rng.choice(token_ids) for _ in range(n)]
    reps = 2 if rng.random() < 0.75 else 3
    return (span * reps)[:room]
