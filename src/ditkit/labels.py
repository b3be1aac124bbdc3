"""Class names: ImageNet's 1000 labels built in, and a name -> id lookup for any label map.

A label map is `{id: "name, synonym, synonym"}`, the form diffusers keeps in a DiT pipeline's
`model_index.json` (`id2label`). The ImageNet map ships as a JSON resource, so nothing is fetched at run time.

Lookup accepts any comma-separated synonym, case-insensitively, or the class id as a string. A few ImageNet
synonyms belong to two classes ("crane" is both the bird, 134, and the machine, 517). diffusers silently maps
them to the higher id; ditkit prefers the class whose *first* name it is (so "maillot" is 638 and "missile"
657) and otherwise refuses with the candidate ids, so a user never samples the wrong class by accident.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterable, Mapping
from importlib import resources

IMAGENET_NUM_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def _imagenet_table() -> tuple[str, ...]:
    text = resources.files("ditkit").joinpath("resources/imagenet_id2label.json").read_text(encoding="utf-8")
    data = json.loads(text)
    table = tuple(data[str(i)] for i in range(IMAGENET_NUM_CLASSES))
    assert len(data) == IMAGENET_NUM_CLASSES, "the ImageNet label resource must hold exactly 1000 classes"
    return table


def imagenet_id2label() -> dict[int, str]:
    """ImageNet-1k class names with synonyms, exactly as diffusers' DiT pipelines carry them (a fresh dict)."""
    return dict(enumerate(_imagenet_table()))


def normalize_id2label(id2label: Mapping[int | str, str]) -> dict[int, str]:
    """JSON turns integer keys into strings; give them back as ints, sorted, with names as plain strings."""
    out: dict[int, str] = {}
    for key, value in id2label.items():
        try:
            idx = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"label map key {key!r} is not a class id (an integer)") from None
        if idx < 0:
            raise ValueError(f"label map key {idx} is negative; class ids start at 0")
        if not isinstance(value, str):
            raise ValueError(f"label map entry {idx} is {value!r}, not a string")
        out[idx] = value
    return dict(sorted(out.items()))


def id2label_from_names(names: Iterable[str] | None) -> dict[int, str] | None:
    """A label list (index = class id, as ditkit checkpoints store it) as an id2label map."""
    return None if names is None else dict(enumerate(names))


def names_from_id2label(
    id2label: Mapping[int, str] | None, num_classes: int | None = None
) -> list[str] | None:
    """The inverse of `id2label_from_names`; None unless the map covers ids 0..n-1 exactly."""
    if id2label is None:
        return None
    n = len(id2label) if num_classes is None else num_classes
    if sorted(id2label) != list(range(n)):
        return None
    return [id2label[i] for i in range(n)]


def _synonyms(label: str) -> list[str]:
    return [s.strip() for s in label.split(",") if s.strip()]


class LabelMap:
    """Maps class names (any synonym) and id strings to class ids, with helpful errors for typos."""

    def __init__(self, id2label: Mapping[int | str, str]) -> None:
        self.id2label = normalize_id2label(id2label)
        # Resolution tiers, most specific first; a tier answers when exactly one class matches in it.
        full_exact: dict[str, set[int]] = {}
        full: dict[str, set[int]] = {}
        primary_exact: dict[str, set[int]] = {}
        primary: dict[str, set[int]] = {}
        any_exact: dict[str, set[int]] = {}
        any_fold: dict[str, set[int]] = {}
        for idx, label in self.id2label.items():
            flat = " ".join(label.split())
            full_exact.setdefault(flat, set()).add(idx)
            full.setdefault(flat.casefold(), set()).add(idx)
            syns = _synonyms(label)
            if syns:
                primary_exact.setdefault(syns[0], set()).add(idx)
                primary.setdefault(syns[0].casefold(), set()).add(idx)
            for s in syns:
                any_exact.setdefault(s, set()).add(idx)
                any_fold.setdefault(s.casefold(), set()).add(idx)
        self._tiers = (
            (full_exact, False),
            (primary_exact, False),
            (full, True),
            (primary, True),
            (any_exact, False),
            (any_fold, True),
        )
        self._names = sorted({s for label in self.id2label.values() for s in _synonyms(label)})

    @classmethod
    def from_id2label(cls, id2label: Mapping[int | str, str]) -> LabelMap:
        return cls(id2label)

    @classmethod
    def imagenet(cls) -> LabelMap:
        return cls(imagenet_id2label())

    def __len__(self) -> int:
        return len(self.id2label)

    @property
    def names(self) -> list[str]:
        """Every synonym, sorted (what `ids` accepts besides id strings)."""
        return list(self._names)

    def name(self, idx: int) -> str:
        """The first (primary) name of a class, e.g. 0 -> 'tench'."""
        if idx not in self.id2label:
            raise ValueError(f"class id {idx} has no name in this label map ({len(self)} classes)")
        syns = _synonyms(self.id2label[idx])
        return syns[0] if syns else str(idx)

    def id(self, name: str | int) -> int:
        if isinstance(name, bool):
            raise ValueError(f"{name!r} is not a class name or id")
        if isinstance(name, int):
            return self._check_id(name, repr(name))
        if not isinstance(name, str):
            raise ValueError(f"{name!r} is not a class name or id")
        text = " ".join(name.split())
        if not text:
            raise ValueError("empty class name")
        # Names win over id strings: a class *named* "5" (e.g. digits, or folders called 0..9 in another
        # order) is found by its name; a digit string that names no class is read as an id.
        is_number = text.lstrip("+-").isdigit()
        for table, fold in self._tiers:
            hits = table.get(text.casefold() if fold else text)
            if not hits:
                continue
            if len(hits) == 1:
                return next(iter(hits))
            options = "; ".join(f"{i} = {self.id2label[i]!r}" for i in sorted(hits))
            raise ValueError(f"class name {name!r} is ambiguous: {options}; pass the class id instead")
        if is_number:
            return self._check_id(int(text), repr(name))
        folded = {n.casefold(): n for n in self._names}
        close = difflib.get_close_matches(text.casefold(), list(folded), n=3, cutoff=0.6)
        hint = (
            "; closest valid names: " + ", ".join(self._describe(folded[c]) for c in close)
            if close
            else f"; names come from the model's label map ({len(self)} classes), or pass a class id"
        )
        raise ValueError(f"unknown class name {name!r}{hint}")

    def ids(self, names: str | int | Iterable[str | int]) -> list[int]:
        """Class ids for names, synonyms or id strings. A single string is one name, never split into letters."""
        if isinstance(names, (str, int)):
            names = [names]
        return [self.id(n) for n in names]

    def _describe(self, name: str) -> str:
        try:
            return f"{name!r} ({self.id(name)})"
        except ValueError:
            return f"{name!r} (ambiguous)"

    def _check_id(self, idx: int, shown: str) -> int:
        if idx not in self.id2label:
            top = max(self.id2label) if self.id2label else -1
            raise ValueError(f"class id {shown} is out of range; valid ids are 0..{top}")
        return idx
