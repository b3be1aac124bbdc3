"""ImageNet class names and the name -> id lookup."""

from __future__ import annotations

import pytest

from ditkit.labels import LabelMap, id2label_from_names, imagenet_id2label, names_from_id2label


def test_imagenet_table_matches_diffusers_id2label():
    table = imagenet_id2label()
    assert len(table) == 1000 and sorted(table) == list(range(1000))
    # Spot checks against the id2label of facebook/DiT-XL-2-256's model_index.json.
    assert table[0] == "tench, Tinca tinca"
    assert table[207] == "golden retriever"
    assert table[2] == "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"
    assert table[400] == "academic gown, academic robe, judge's robe"
    assert table[999] == "toilet tissue, toilet paper, bathroom tissue"
    assert table[134] == table[517] == "crane"  # ImageNet's famous duplicate
    table[0] = "changed"
    assert imagenet_id2label()[0] == "tench, Tinca tinca"  # callers get a copy


def test_every_synonym_maps_to_its_id():
    labels = LabelMap.imagenet()
    # diffusers' own slow-test words, and synonyms in any case and spacing
    assert labels.ids(["vase", "umbrella", "white shark", "white wolf"]) == [883, 879, 2, 270]
    assert labels.ids(["Golden Retriever", "  tench ", "Tinca tinca", "tench, Tinca tinca"]) == [207, 0, 0, 0]
    assert labels.ids(["207", 3]) == [207, 3]
    assert labels.ids("golden retriever") == [207]  # one string is one name, never a list of letters
    assert labels.name(207) == "golden retriever"
    owners: dict[str, set[int]] = {}
    for idx, label in imagenet_id2label().items():
        for synonym in label.split(","):
            owners.setdefault(synonym.strip().casefold(), set()).add(idx)
    unique = 0
    for synonym, ids in owners.items():
        if len(ids) == 1:
            assert labels.id(synonym) == next(iter(ids))
            unique += 1
        else:  # shared: resolved to one of its owners, or refused as ambiguous
            try:
                assert labels.id(synonym) in ids
            except ValueError as err:
                assert "ambiguous" in str(err)
    assert unique > 1800


def test_shared_synonyms_prefer_the_class_they_name_first():
    labels = LabelMap.imagenet()
    assert labels.id("maillot") == 638 and labels.id("maillot, tank suit") == 639
    assert labels.id("missile") == 657 and labels.id("partridge") == 86
    assert labels.id("Cardigan") == 264 and labels.id("cardigan") == 474  # the corgi vs the sweater
    with pytest.raises(ValueError, match=r"ambiguous: 134 = 'crane'; 517 = 'crane'"):
        labels.id("crane")
    with pytest.raises(ValueError, match="387.*388"):
        labels.id("panda")


def test_unknown_names_suggest_the_closest():
    labels = LabelMap.imagenet()
    with pytest.raises(
        ValueError,
        match=r"unknown class name 'golden retreiver'; closest valid names: 'golden retriever' \(207\)",
    ):
        labels.ids(["golden retreiver"])
    with pytest.raises(ValueError, match="out of range; valid ids are 0..999"):
        labels.id("1000")
    with pytest.raises(ValueError, match="empty"):
        labels.id("  ")
    with pytest.raises(ValueError, match="not a class name"):
        labels.id(True)


def test_custom_label_maps_and_conversions():
    labels = LabelMap.from_id2label({"0": "zero, nought", "1": "one"})
    assert labels.ids(["Nought", "one", "1"]) == [0, 1, 1]
    assert len(labels) == 2 and labels.names == ["nought", "one", "zero"]
    assert id2label_from_names(["a", "b"]) == {0: "a", 1: "b"}
    assert names_from_id2label({0: "a", 1: "b"}) == ["a", "b"]
    assert names_from_id2label({0: "a", 2: "b"}) is None
    with pytest.raises(ValueError, match="not a class id"):
        LabelMap({"x": "a"})
