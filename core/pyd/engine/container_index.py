"""Container lookup by full ID, name, or unique ID prefix; name reservation; ID and name minting.

Docker's order (``daemon.GetContainer``): an exact full ID, then a name, then an ID prefix;
an ambiguous prefix is an error rather than a guess.
"""

from __future__ import annotations

import random
import secrets
from typing import Generic, Iterator, TypeVar

from pyd.errors import Conflict, InvalidParameter, NotFound

T = TypeVar("T")

# Name generator word lists, in the spirit of Docker's "adjective_surname" names (pyd's own).
_ADJECTIVES = (
    "agile amazing bold brave bright calm clever cool crazy dazzling eager elated epic fervent "
    "festive focused friendly gallant gentle happy hopeful jolly keen kind laughing lucid "
    "magical modest nervous nifty nostalgic optimistic peaceful pensive practical quirky "
    "relaxed serene sharp silly sleepy stoic strange sweet tender trusting upbeat vibrant "
    "vigilant vigorous wizardly wonderful youthful zealous zen"
).split()
_SCIENTISTS = (
    "agnesi albattani allen archimedes babbage banach bardeen bartik bell bhabha blackwell "
    "bohr boole borg bose brattain brown carson cerf chandrasekhar curie darwin dijkstra "
    "einstein euclid euler fermat fermi feynman franklin galileo gauss goldberg goodall hamilton "
    "hawking heisenberg hodgkin hopper hypatia johnson kepler knuth lamarr lovelace margulis "
    "maxwell mayer meitner mendel newton noether pascal pasteur perlman planck ritchie "
    "shannon sinoussi thompson torvalds turing wescoff wilson wozniak wright yalow"
).split()


def new_id(taken: "ContainerIndex[object] | None" = None) -> str:
    """64 hex digits whose 12-digit short form is not all decimal digits (Docker's rule, so a
    short ID can never be mistaken for a number)."""
    while True:
        cid = secrets.token_hex(32)
        if cid[:12].isdigit():
            continue
        if taken is not None and cid in taken:
            continue
        return cid


def random_name(retry: int = 0) -> str:
    name = f"{random.choice(_ADJECTIVES)}_{random.choice(_SCIENTISTS)}"
    if retry:
        name += str(random.randint(0, 9))
    return name


class ContainerIndex(Generic[T]):
    """Maps IDs and names to objects. Not thread-safe: used from the event loop only."""

    def __init__(self) -> None:
        self._by_id: dict[str, T] = {}
        self._names: dict[str, str] = {}  # name -> id

    def __contains__(self, cid: object) -> bool:
        return cid in self._by_id

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, cid: str, obj: T, name: str) -> None:
        self.reserve(name, cid)
        self._by_id[cid] = obj

    def remove(self, cid: str) -> None:
        self._by_id.pop(cid, None)
        for n in [n for n, i in self._names.items() if i == cid]:
            del self._names[n]

    def reserve(self, name: str, cid: str) -> None:
        owner = self._names.get(name)
        if owner is not None and owner != cid:
            raise Conflict(
                f'Conflict. The container name "/{name}" is already in use by container "{owner}". '
                "You have to remove (or rename) that container to be able to reuse that name."
            )
        self._names[name] = cid

    def release(self, name: str) -> None:
        self._names.pop(name, None)

    def name_taken(self, name: str) -> bool:
        return name in self._names

    def id_of(self, ref: str) -> str:
        """The full ID for a full ID, a name (with or without ``/``) or a unique ID prefix."""
        if not ref:
            raise NotFound("No such container: ")
        if ref in self._by_id:
            return ref
        name = ref[1:] if ref.startswith("/") else ref
        if name in self._names:
            return self._names[name]
        matches = [cid for cid in self._by_id if cid.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidParameter(f"multiple containers found with provided prefix: {ref}")
        raise NotFound(f"No such container: {ref}")

    def get(self, ref: str) -> T:
        return self._by_id[self.id_of(ref)]

    def get_id(self, cid: str) -> T | None:
        return self._by_id.get(cid)

    def fresh_name(self) -> str:
        for attempt in range(20):
            name = random_name(attempt)
            if name not in self._names:
                return name
        return "pyd_" + secrets.token_hex(6)
