"""Synthetic corpus for the reference model ``interptest-ioi`` (indirect object identification, several layers).

The documents mix

* **IOI sentences** in fifteen templates after the IOI paper's (Wang et al. 2022, appendix), both orders of the
  first clause (ABBA and BABA), e.g. "When Mary and John went to the store, John gave a drink to Mary.";
* **name copying** (induction over names, one and two people) and filler sentences from
  :mod:`interptest.zoo.corpus`;
* rows of **repeated random-token spans** (added by the training script), which make induction heads.

Held out of training (used only by :mod:`interptest.zoo.evaluate` on this model):

* **templates**: :data:`HELD_OUT_TEMPLATES` never occurs in training; its words all do, in other templates;
* **names**: a name ``n`` with ``crc32("ioi-name|" + n) % 6 == 0`` never occurs in an IOI sentence of the
  training corpus (it does occur in name copying and filler, so its embedding is trained); together with the
  pair {Mary, John} of the shipped prompt, which is never put in one IOI sentence;

so held-out accuracy is measured on sentences whose names and templates the IOI task never saw together.
"""

from __future__ import annotations

import zlib

from interptest.zoo.corpus import SHIPPED_IOI_PAIRS, Generator, person_pool

# {A} and {B} are the first clause's names in order; {S} repeats one of them, {IO} is the other (the answer).
IOI_TEMPLATES = (
    "Then, {A} and {B} went to the {P}. {S} gave a {O} to",
    "Then, {A} and {B} had a lot of fun at the {P}. {S} gave a {O} to",
    "Then, {A} and {B} were working at the {P}. {S} decided to give a {O} to",
    "Then, {A} and {B} were thinking about going to the {P}. {S} wanted to give a {O} to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "After {A} and {B} went to the {P}, {S} gave a {O} to",
    "When {A} and {B} got a {O} at the {P}, {S} decided to give it to",
    "When {A} and {B} got a {O} at the {P}, {S} decided to give the {O} to",
    "While {A} and {B} were working at the {P}, {S} gave a {O} to",
    "While {A} and {B} were going to the {P}, {S} gave a {O} to",
    "After the lunch, {A} and {B} went to the {P}. {S} gave a {O} to",
    "Afterwards, {A} and {B} went to the {P}. {S} gave a {O} to",
    "When {A} and {B} went to the {P}, {S} gave a {O} to",
    "The {P} {A} and {B} went to had a {O}. {S} gave it to",
    "Friends {A} and {B} found a {O} at the {P}. {S} gave it to",
)
# Never trained, the shipped prompt's template (12) among them: each one's phrases stand in trained templates
# ("Then, A and B" + "went to the P. S gave a O to"; "Then, A and B were" + "working at the" + "decided to give";
# "While A and B were" + "going to the"; "When A and B" + "went to the" + ", S gave a O to"), only not in
# this order.
HELD_OUT_TEMPLATES = frozenset({0, 2, 9, 12})
TRAIN_TEMPLATES = tuple(i for i in range(len(IOI_TEMPLATES)) if i not in HELD_OUT_TEMPLATES)


def ioi_name_held_out(name: str) -> bool:
    """A name that never occurs in a training IOI sentence."""
    return zlib.crc32(f"ioi-name|{name}".encode()) % 6 == 0


def held_out_ioi_names() -> tuple[str, ...]:
    return tuple(n for n in person_pool() if ioi_name_held_out(n))


def train_ioi_names() -> tuple[str, ...]:
    return tuple(n for n in person_pool() if not ioi_name_held_out(n))


def ioi_sentence(template: int, a: str, b: str, s: str, place: str, obj: str) -> tuple[str, str]:
    """(prompt, answer) of template ``template``: first clause "a and b", subject ``s`` (one of them)."""
    io = b if s == a else a
    return IOI_TEMPLATES[template].format(A=a, B=b, S=s, P=place, O=obj), f" {io}"


class IOIGenerator(Generator):
    """Documents for ``interptest-ioi``: IOI sentences (training templates and names), name copying, filler."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.ioi_names = train_ioi_names()

    def ioi(self, used: set[str]) -> str:
        r = self.rng
        while True:
            a, b = r.choice(self.ioi_names), r.choice(self.ioi_names)
            if a != b and a not in used and b not in used and frozenset({a, b}) not in SHIPPED_IOI_PAIRS:
                break
        used.update((a, b))
        prompt, answer = ioi_sentence(
            r.choice(TRAIN_TEMPLATES), a, b, r.choice((a, b)), r.choice(self.places), r.choice(self.objects)
        )
        return prompt + answer + "."

    def sentence(self, used: set[str]) -> str:
        k = self.rng.random()
        if k < 0.55:
            return self.ioi(used)
        if k < 0.70:
            return self.induction_one(used)
        if k < 0.82:
            return self.induction_two(used)
        return self.filler(used)
