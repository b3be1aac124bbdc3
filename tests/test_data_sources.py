"""Data sources for `--data PATH`: detection, image modes, unreadable files, label columns, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _data_helpers import (
    COLORS,
    broken,
    celeba_folder,
    class_folder,
    color_of,
    hf_wikiart_folder,
    manifest_folder,
    parquet_table,
    solid,
    truncated,
)
from ditkit.data import UnreadableImage, decode_image, detect, open_dataset, to_rgb
from ditkit.data.tables import encode_column


# -- image reading --------------------------------------------------------------------------------------
def test_every_pil_mode_becomes_rgb():
    from PIL import Image

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent: composited on white
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("LA", (4, 4), (0, 255))).getpixel((0, 0)) == (0, 0, 0)
    pal = Image.new("RGB", (4, 4), (0, 0, 255)).convert("P")
    assert to_rgb(pal).getpixel((0, 0)) == (0, 0, 255)
    assert to_rgb(Image.new("L", (4, 4), 7)).getpixel((0, 0)) == (7, 7, 7)
    assert to_rgb(Image.new("1", (4, 4), 1)).getpixel((0, 0)) == (255, 255, 255)
    cmyk = to_rgb(Image.new("RGB", (4, 4), (0, 255, 0)).convert("CMYK"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0)) == (0, 255, 0)
    # 16-bit: rescaled to 8 bits (PIL's own convert would clip 32768 to 255)
    sixteen = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert sixteen.mode == "I;16" and to_rgb(sixteen).getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))).getpixel((0, 0)) == (128, 128, 128)


def test_decode_crops_upscales_and_rejects(tmp_path):
    arr, up = decode_image(solid(tmp_path / "a.png", (10, 20, 30), size=(40, 20)), 16)
    assert arr.shape == (16, 16, 3) and not up and tuple(arr[8, 8]) == (10, 20, 30)
    arr, up = decode_image(solid(tmp_path / "small.png", (10, 20, 30), size=(6, 9)), 16)
    assert arr.shape == (16, 16, 3) and up  # smaller than the crop: upscaled, and reported
    sixteen = tmp_path / "deep.png"
    from PIL import Image

    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(sixteen)
    assert decode_image(sixteen, 8)[0].min() == 255
    with pytest.raises(UnreadableImage, match="truncated"):
        decode_image(truncated(tmp_path / "t.png"), 8)
    with pytest.raises(UnreadableImage):
        decode_image(broken(tmp_path / "b.png"), 8)


def test_unreadable_files_are_replaced_with_their_own_labels(tmp_path):
    root = class_folder(tmp_path / "d", per_class=2)
    broken(root / "cat" / "x_broken.png")
    truncated(root / "dog" / "x_truncated.png")
    solid(root / "dog" / "y_gray.png", (128, 128, 128), mode="L")
    solid(root / "cat" / "y_rgba.png", COLORS[0], mode="RGBA")
    ds = open_dataset(root, 8)
    assert ds.label_names == ["cat", "dog"] and len(ds) == 8
    batch = ds.load_batch(torch.arange(len(ds)))
    assert sorted(name.rsplit("/", 1)[-1] for name, _ in batch.skipped) == ["x_broken.png", "x_truncated.png"]
    for image, label in zip(batch.images, batch.labels):  # never an image with another image's label
        if abs(float(image.mean()) - (128 / 127.5 - 1)) > 1e-3:  # the gray one has no class colour
            assert color_of(image) == int(label)
    again = ds.load_batch(torch.arange(len(ds)))
    assert again.skipped == [] and torch.equal(again.images, batch.images)  # reported once, replaced the same


def test_a_folder_of_only_broken_images_is_an_error(tmp_path):
    broken(tmp_path / "a.png")
    broken(tmp_path / "b.png")
    ds = open_dataset(tmp_path, 8)
    with pytest.raises(ValueError, match="none of the 2 images could be read"):
        ds.load_batch(torch.tensor([0]))


def test_numeric_class_folders_sort_as_numbers(tmp_path):
    for name in ["0", "1", "2", "10"]:
        solid(tmp_path / name / "a.png", (0, 0, 0))
    assert open_dataset(tmp_path, 8).label_names == ["0", "1", "2", "10"]


# -- layouts --------------------------------------------------------------------------------------------
def test_detect_every_layout(tmp_path):
    pytest.importorskip("pyarrow")
    assert detect("digits") == "digits"
    assert detect(class_folder(tmp_path / "folder")) == "folder"
    assert detect(manifest_folder(tmp_path / "csv")) == "manifest"
    assert detect(manifest_folder(tmp_path / "jsonl", kind="jsonl")) == "manifest"
    assert detect(parquet_table(tmp_path / "t.parquet")) == "parquet"
    assert detect(celeba_folder(tmp_path / "celeba")) == "celeba"
    (tmp_path / "pq" / "data").mkdir(parents=True)
    parquet_table(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet")
    assert detect(tmp_path / "pq") == "parquet-folder"


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_labels(tmp_path, kind):
    root = manifest_folder(tmp_path, kind=kind)
    ds = open_dataset(root, 8)  # a column named "label" is the default
    assert ds.label_names == ["cat", "dog"] and ds.labels.tolist() == [0, 1, 0, 1, 0, 1]
    images, labels = ds.load(torch.arange(6))
    assert [color_of(x) for x in images] == labels.tolist()
    assert open_dataset(root, 8, ["none"]).num_classes == 0
    with pytest.raises(ValueError, match="columns: label, caption"):
        open_dataset(root, 8, ["genre"])


def test_manifest_errors(tmp_path):
    root = manifest_folder(tmp_path)
    manifest = root / "labels.csv"
    manifest.write_text(manifest.read_text() + "images/missing.png,cat,x\n")
    with pytest.raises(ValueError, match=r"1 of 7 listed files do not exist \(e.g. images/missing.png\)"):
        open_dataset(root, 8)
    manifest.write_text("file_name,label\nimages/0.png,\n")
    with pytest.raises(ValueError, match="row 1 has no value in label column 'label'"):
        open_dataset(manifest, 8)
    manifest.write_text("file_name,label\n")
    with pytest.raises(ValueError, match="lists no images"):
        open_dataset(manifest, 8)


def test_parquet_with_image_bytes_and_string_labels(tmp_path):
    pytest.importorskip("pyarrow")
    path = parquet_table(tmp_path / "t.parquet", with_broken=True)
    ds = open_dataset(path, 8, ["style"])
    assert ds.label_names == ["cubism", "impressionism"] and ds.num_classes == 2
    batch = ds.load_batch(torch.arange(6))
    assert len(batch.skipped) == 1 and "t[1]" in batch.skipped[0][0]
    assert [color_of(x) for x in batch.images] == batch.labels.tolist()
    with pytest.raises(ValueError, match="not a class label"):
        open_dataset(path, 8, ["score"])  # floats are not classes


def test_hf_datasets_folder_in_the_wikiart_layout(tmp_path):
    pytest.importorskip("datasets")
    folder = hf_wikiart_folder(tmp_path / "wikiart")
    assert detect(folder) == "hf-datasets"
    ds = open_dataset(folder, 8, ["genre", "style"])
    assert ds.label_names == {
        "genre": ["landscape", "portrait", "still_life"],
        "style": ["Impressionism", "Cubism"],
    }
    assert ds.num_classes == (3, 2) and ds.labels.shape == (8, 2)
    images, labels = ds.load(torch.arange(8))
    assert [color_of(x) for x in images] == labels[:, 0].tolist()  # genre k was drawn in colour k
    assert open_dataset(folder, 8).num_classes == 0  # no --label-columns, no "label" column: unconditional
    with pytest.raises(ValueError, match="columns: artist, genre, style"):
        open_dataset(folder, 8, ["genres"])
    # the same data as a DatasetDict folder, and as Parquet written by datasets (names in the schema)
    import datasets

    datasets.DatasetDict({"train": datasets.load_from_disk(str(folder))}).save_to_disk(str(tmp_path / "dd"))
    assert open_dataset(tmp_path / "dd", 8, ["style"]).label_names == ["Impressionism", "Cubism"]
    datasets.load_from_disk(str(folder)).to_parquet(str(tmp_path / "w.parquet"))
    assert open_dataset(tmp_path / "w.parquet", 8, ["genre"]).label_names[0] == "landscape"


@pytest.mark.parametrize("csv", [False, True])
def test_celeba_attributes(tmp_path, csv):
    root = celeba_folder(tmp_path, csv=csv)
    ds = open_dataset(root, 8, ["Male"])
    assert ds.label_names == ["not Male, female", "Male, male"] and ds.labels.tolist() == [0, 1, 0, 1, 0, 1]
    images, labels = ds.load(torch.arange(6))
    assert [color_of(x) for x in images] == labels.tolist()
    both = open_dataset(root, 8, ["male", "Smiling"])  # column names are case-insensitive
    assert both.num_classes == (2, 2) and list(both.label_names) == ["Male", "Smiling"]
    assert open_dataset(root, 8).num_classes == 0
    with pytest.raises(ValueError, match="did you mean 'Smiling'"):
        open_dataset(root, 8, ["Smilin"])


def test_celeba_missing_images(tmp_path):
    root = celeba_folder(tmp_path)
    (root / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(ValueError, match="1 of 6 listed images are not in"):
        open_dataset(root, 8, ["Male"])


def test_label_column_rules():
    ids, names = encode_column("genre", [0, 2, 1], names=["a", "b", "c"])
    assert ids.tolist() == [0, 2, 1] and names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="row 2 has no label"):
        encode_column("genre", [0, -1], names=["a", "b"])
    assert encode_column("n", ["3", "10", "3"])[1] == [str(i) for i in range(11)]  # digits stay ids
    assert encode_column("Smiling", [1, -1, 1])[0].tolist() == [1, 0, 1]
    assert encode_column("flag", [True, False])[1] == ["not flag", "flag"]
    with pytest.raises(ValueError, match="negative integers"):
        encode_column("n", [0, -2, 3])
    with pytest.raises(ValueError, match="not a class label"):
        encode_column("x", [0.5, 1.5])


def test_paths_that_are_no_data_set(tmp_path):
    with pytest.raises(FileNotFoundError):
        detect(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(
        ValueError, match="not a data set ditkit reads; --data takes a folder with one subfolder"
    ):
        detect(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="one image is not a data set"):
        detect(solid(tmp_path / "one.png", (0, 0, 0)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        detect(tmp_path / "empty")


def test_tables_without_pyarrow_name_the_extra(tmp_path, monkeypatch):
    import sys

    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"needs pyarrow: pip install 'ditkit\[data\]'"):
        open_dataset(tmp_path / "t.parquet", 8)
