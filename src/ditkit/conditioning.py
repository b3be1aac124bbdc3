"""One conditioning schema: what a model is conditioned on, and every rule that follows from it.

A `Conditioning` says which attributes a model takes and their class names, whether null rows exist (label
dropout was trained, so guidance is possible), the dropout rule, how names resolve to ids, how the null
condition is built and how wide an embedding condition is. The trainer, the grids, fine-tuning and the
pipeline ask it instead of re-deriving these rules; it round-trips through `to_dict`/`from_dict` and is stored
in every checkpoint ditkit writes (`Conditioning.to_dict()` under the key "conditioning").

Kinds:
    "none"        unconditional.
    "class"       one attribute of class ids (ImageNet, class folders); null id = num_classes (official).
    "attributes"  K attributes (WikiArt genre and style), y is (N, K); attribute k's null id = its class count.
    "embedding"   a cond_dim-wide vector (image/text embeddings); the null condition is the zero vector.

Name resolution (one place):
    - a name resolves through `ditkit.labels.LabelMap` (synonyms, case-insensitive, suggestions for typos);
      a digit string that names no class is read as an id; an id outside 0..n-1 is an error;
    - a name on a model without names: an error that says to pass ids;
    - a free attribute (None, or left out of a dict) means that attribute's null row: left unguided. It needs
      the null row (a model trained with dropout); without one it is an error naming the attribute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

KINDS = ("none", "class", "attributes", "embedding")
_SINGLE = "label"  # the attribute name of a one-attribute model without a column name


@dataclass(frozen=True)
class Conditioning:
    kind: str = "none"
    # attribute -> class names (None: the classes have no names); one entry for "class", K for "attributes"
    names: dict[str, list[str] | None] = field(default_factory=dict)
    sizes: tuple[int, ...] = ()
    dropout: float = 0.0  # all attributes together (or the whole embedding) become the null
    attribute_dropout: float = 0.0  # each attribute alone (multi-attribute models only)
    cond_dim: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"conditioning kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.attribute_dropout < 1.0:
            raise ValueError(
                f"conditioning dropout must be in [0, 1), got {self.dropout}, {self.attribute_dropout}"
            )
        if self.kind in ("class", "attributes"):
            if len(self.names) != len(self.sizes) or not self.sizes:
                raise ValueError(
                    f"conditioning: {len(self.names)} attribute(s) but class counts {self.sizes}"
                )
            for (attr, names), size in zip(self.names.items(), self.sizes):
                if names is not None and len(names) != size:
                    raise ValueError(f"attribute {attr!r} has {len(names)} names but {size} classes")
        if self.kind == "class" and len(self.sizes) != 1:
            raise ValueError("a 'class' conditioning has exactly one attribute")
        if self.kind == "embedding" and self.cond_dim <= 0:
            raise ValueError("an 'embedding' conditioning needs cond_dim > 0")

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_labels(
        cls,
        label_names: list[str] | dict[str, list[str]] | None,
        num_classes: int | tuple[int, ...] = 0,
        *,
        dropout: float = 0.0,
        attribute_dropout: float = 0.0,
        cond_dim: int = 0,
        column: str | None = None,
    ) -> Conditioning:
        """From a data set's (or a file's) label names: a list (one attribute), a dict (several) or None."""
        if cond_dim:
            return cls("embedding", {}, (), dropout, 0.0, cond_dim)
        if isinstance(label_names, Mapping) and label_names:
            names = {str(k): [str(n) for n in v] for k, v in label_names.items()}
            sizes = tuple(len(v) for v in names.values())
            return cls("attributes", names, sizes, dropout, attribute_dropout)
        if isinstance(num_classes, tuple) and num_classes:
            names = {f"attr{k}": None for k in range(len(num_classes))}
            return cls("attributes", names, tuple(num_classes), dropout, attribute_dropout)
        n = len(label_names) if label_names else int(num_classes or 0)
        if not n:
            return cls()
        listed = [str(x) for x in label_names] if label_names else None
        return cls("class", {column or _SINGLE: listed}, (n,), dropout)

    @classmethod
    def from_model_config(
        cls, cfg: Any, label_names: Any = None, attribute_dropout: float = 0.0
    ) -> Conditioning:
        """From a ModelConfig (sizes, dropout, cond_dim) and optional names."""
        return cls.from_labels(
            label_names,
            cfg.num_classes,
            dropout=float(cfg.class_dropout_prob) if cfg.conditional else 0.0,
            attribute_dropout=attribute_dropout if cfg.multi_label else 0.0,
            cond_dim=int(cfg.cond_dim),
        )

    # -- (de)serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain containers only (JSON- and `weights_only`-safe)."""
        return {
            "kind": self.kind,
            "names": {k: (list(v) if v is not None else None) for k, v in self.names.items()},
            "sizes": list(self.sizes),
            "dropout": self.dropout,
            "attribute_dropout": self.attribute_dropout,
            "cond_dim": self.cond_dim,
        }

    @classmethod
    def from_dict(cls, data: Any, *, origin: str = "conditioning") -> Conditioning:
        if not isinstance(data, Mapping):
            raise ValueError(f"{origin}: 'conditioning' must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"kind", "names", "sizes", "dropout", "attribute_dropout", "cond_dim"})
        if unknown:
            raise ValueError(f"{origin}: unknown conditioning key(s) {unknown}")
        names = data.get("names") or {}
        sizes = data.get("sizes") or []
        if not isinstance(names, Mapping) or not isinstance(sizes, list | tuple):
            raise ValueError(f"{origin}: conditioning 'names' must be a mapping and 'sizes' a list")
        try:
            return cls(
                str(data.get("kind", "none")),
                {str(k): (None if v is None else [str(n) for n in v]) for k, v in names.items()},
                tuple(int(s) for s in sizes),
                float(data.get("dropout", 0.0)),
                float(data.get("attribute_dropout", 0.0)),
                int(data.get("cond_dim", 0)),
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{origin}: bad conditioning entry: {err}") from None

    # -- what follows from the schema ------------------------------------------------------------------
    @property
    def has_labels(self) -> bool:
        return self.kind in ("class", "attributes")

    @property
    def has_null(self) -> bool:
        """Null rows (or the zero embedding) were trained: guidance, and free attributes, are possible."""
        return self.kind != "none" and self.dropout > 0

    @property
    def null_label(self) -> int | tuple[int, ...] | None:
        """The null id: num_classes for one attribute, one per attribute for several; None otherwise."""
        if self.kind == "class":
            return self.sizes[0]
        if self.kind == "attributes":
            return tuple(self.sizes)
        return None

    @property
    def attributes(self) -> list[str]:
        return list(self.names)

    def label_names(self) -> list[str] | dict[str, list[str]] | None:
        """The legacy form (checkpoints' `label_names`): a list, a dict attribute -> list, or None."""
        if self.kind == "class":
            return next(iter(self.names.values()))
        if self.kind == "attributes" and all(v is not None for v in self.names.values()):
            return {k: list(v) for k, v in self.names.items()}  # type: ignore[arg-type]
        return None

    def id2label(self) -> dict[int, str] | None:
        names = self.label_names() if self.kind == "class" else None
        return dict(enumerate(names)) if names else None

    def null_condition(self, n: int, device: Any = "cpu") -> torch.Tensor | None:
        """The condition that means "no condition", for n samples: (n,) / (n, K) null ids or (n, D) zeros."""
        if self.kind == "embedding":
            return torch.zeros(n, self.cond_dim, device=device)
        null = self.null_label
        if null is None:
            return None
        return (
            torch.tensor(null, dtype=torch.long, device=device)
            .expand(n, *([len(null)] if isinstance(null, tuple) else []))
            .clone()
        )

    def drop_mask(
        self, labels: torch.Tensor | None, n: int, generator: torch.Generator | None
    ) -> torch.Tensor | None:
        """Which conditions of a batch become the null (classifier-free-guidance dropout): (n,) or (n, K)
        booleans drawn from `generator`, or None when nothing is dropped. `labels` are the batch's ids."""
        if self.dropout <= 0 or self.kind == "none":
            return None
        if self.kind == "embedding":
            return torch.rand(n, generator=generator) < self.dropout
        from .models import drop_labels

        assert labels is not None
        dropped = drop_labels(
            labels, self.dropout, self.null_label, generator=generator, attribute_prob=self.attribute_dropout
        )
        return dropped != labels

    def apply_drop(self, cond: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`cond` with the masked entries replaced by the null condition."""
        if mask is None:
            return cond
        mask = mask.to(cond.device)
        if self.kind == "embedding":
            return torch.where(mask.view(-1, 1), torch.zeros_like(cond), cond)
        null = torch.tensor(self.null_label, dtype=cond.dtype, device=cond.device)
        return torch.where(mask, null, cond)

    # -- name resolution -------------------------------------------------------------------------------
    def _map(self, attr: str):
        from .labels import LabelMap

        cache = self.__dict__.setdefault("_maps", {})
        if attr not in cache:
            cache[attr] = LabelMap.from_id2label(dict(enumerate(self.names[attr] or [])))
        return cache[attr]

    def attribute_id(self, k: int, value: Any) -> int:
        """Attribute k's class id from an id, an id string or a name; None = the attribute's null row."""
        if not self.has_labels:
            raise ValueError("this model is not conditioned on class labels")
        attr, size = self.attributes[k], self.sizes[k]
        prefix = f"{attr}: " if self.kind == "attributes" else ""
        if value is None:
            if not self.has_null:
                raise ValueError(f"{prefix}cannot leave it free: the model was trained without label dropout")
            return size
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, str) and (self.names[attr] or not value.strip().lstrip("-").isdigit()):
            if not self.names[attr]:
                raise ValueError(
                    f"this model has no names for {'attribute ' + repr(attr) if prefix else 'its classes'}; pass class ids"
                )
            try:
                return self._map(attr).id(value)
            except ValueError as err:
                names = self.names[attr]
                if len(names) <= 40 and str(err).startswith("unknown class name"):
                    import difflib  # a short list: suggest and show it all

                    folded = {n.casefold(): n for n in names}
                    close = difflib.get_close_matches(str(value).casefold(), list(folded), n=2, cutoff=0.6)
                    hint = f" (did you mean {' or '.join(repr(folded[c]) for c in close)}?)" if close else ""
                    raise ValueError(
                        f"{prefix}unknown label {value!r}{hint}; valid labels: {', '.join(names)} "
                        f"(or ids 0..{size - 1})"
                    ) from None
                raise ValueError(f"{prefix}{err}") from None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | str | float)
            or float(value) != int(float(value))
        ):
            raise ValueError(f"{prefix}{value!r} is not a class name or id")
        idx = int(float(value))
        if not 0 <= idx < size:
            raise ValueError(f"{prefix}class label {idx} is out of range; valid ids are 0..{size - 1}")
        return idx

    def class_ids(self, labels: Any) -> list[int]:
        """Ids of a one-attribute model from ids, names or a mix (a bare string is one name)."""
        if isinstance(labels, int | str) or (isinstance(labels, torch.Tensor) and labels.ndim == 0):
            labels = [labels]
        if isinstance(labels, torch.Tensor):
            labels = labels.tolist()
        return [self.attribute_id(0, v) for v in labels]

    def rows(self, labels: Any) -> list[tuple[int, ...]]:
        """Rows of per-attribute ids from dicts (missing attributes left free), sequences (None = free) or an
        (N, K) tensor."""
        names = self.attributes
        if isinstance(labels, torch.Tensor):
            labels = labels.tolist()
        if isinstance(labels, Mapping):
            labels = [labels]
        out = []
        for item in labels:
            if isinstance(item, Mapping):
                unknown = sorted(set(item) - set(names))
                if unknown:
                    raise ValueError(f"unknown attribute(s) {unknown}; this model has {', '.join(names)}")
                values = [item.get(a) for a in names]
            elif isinstance(item, Sequence) and not isinstance(item, str):
                if len(item) != len(names):
                    raise ValueError(
                        f"each label needs {len(names)} entries ({', '.join(names)}), got {item!r}"
                    )
                values = list(item)
            else:
                raise ValueError(
                    f"this model takes one label per attribute ({', '.join(names)}): pass dicts like "
                    f"{{{names[0]!r}: ...}} or sequences, got {item!r}"
                )
            out.append(tuple(self.attribute_id(k, v) for k, v in enumerate(values)))
        return out

    def column_name(self, idx: int, k: int = 0) -> str:
        """A short display name for class `idx` of attribute k (its first synonym, or the id)."""
        names = self.names[self.attributes[k]] if self.has_labels else None
        if not names or not 0 <= idx < len(names):
            return str(idx)
        return names[idx].split(",")[0].strip() or str(idx)


def store_in_folder(conditioning: Conditioning) -> dict[str, Any]:
    """What a pipeline folder's JSON should hold under "conditioning" (the same dict as in checkpoints)."""
    return conditioning.to_dict()
