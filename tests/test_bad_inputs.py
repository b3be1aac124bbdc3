"""Bad input, by class: every loader-facing command answers a corpus of damaged, mismatched, foreign and
malicious files with exit 2 and one line naming the file, never a traceback, never running code; nothing is
silently wrong (checksums, non-finite data, malformed manifests, paths outside the data folder); output
folders and full disks are one line; a closed stdout pipe is not an error; bugs say they are bugs.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ditkit
from _data_helpers import TINY_RUN, class_folder, solid, tiny_vae
from ditkit.cli.main import main
from ditkit.io import (
    save_diffusers_pipeline,
    save_diffusers_transformer,
    save_ditkit_pipeline,
    save_safetensors,
)
from ditkit.io.native import (
    CHECKPOINT_FORMAT,
    CHECKSUM_KEY,
    atomic_write,
    checkpoint_checksums,
    model_from_checkpoint,
    prepare_output_dir,
    verify_checksum,
    weights_checksum,
)

MARKER_NAME = "CODE-RAN"


class _RunsCode:
    """A pickled object whose unpickling would run a shell command (it must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny():
    return ditkit.create_model(
        "DiT-S/8", input_size=8, in_channels=1, num_classes=3, depth=1, hidden_size=32, num_heads=2
    )


def _st(path: Path, state: dict, metadata: dict) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def _flip_byte(src: Path, dst: Path, offset: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x40
    dst.write_bytes(bytes(data))
    return dst


def _ditkit_files(root: Path, m) -> dict[str, Path]:
    """Damaged ditkit safetensors files and checkpoints: (name -> path)."""
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    cfg = m.config.to_dict()
    meta = {"format": "ditkit-safetensors", "model_config": json.dumps(cfg), "label_names": "null"}
    ck = {
        "format": CHECKPOINT_FORMAT, "version": 1, "model_config": cfg, "model": sd, "ema": sd, "optimizer": {},
        "scheduler": {}, "step": 1, "rng": {"generator": torch.Generator().get_state()}, "config": {},
        "label_names": None, "ditkit_version": "0",
    }  # fmt: skip
    good_st = save_safetensors(m, root / "good.safetensors")
    good_pt = root / "good.pt"
    torch.save({**ck, CHECKSUM_KEY: checkpoint_checksums(ck)}, good_pt)
    shape = dict(sd, **{"x_embedder.proj.bias": torch.zeros(7)})
    missing = {k: v for k, v in sd.items() if k != "x_embedder.proj.bias"}
    huge = dict(cfg, hidden_size=10**9, num_heads=1)
    wide = dict(cfg, hidden_size=4096, num_heads=1, depth=28)
    files = {
        "st-wrong-shape": _st(root / "shape.safetensors", shape, meta),
        "st-missing-key": _st(root / "missing.safetensors", missing, meta),
        "st-extra-key": _st(root / "extra.safetensors", dict(sd, extra=torch.zeros(1)), meta),
        "st-int-weights": _st(
            root / "int.safetensors",
            dict(sd, **{"x_embedder.proj.bias": torch.zeros(32, dtype=torch.int32)}),
            meta,
        ),  # fmt: skip
        "st-no-config": _st(root / "noconfig.safetensors", sd, {"format": "ditkit-safetensors"}),
        "st-huge-config": _st(root / "huge.safetensors", sd, dict(meta, model_config=json.dumps(huge))),
        "st-oversized-config": _st(root / "wide.safetensors", sd, dict(meta, model_config=json.dumps(wide))),
        "st-config-list": _st(root / "cfglist.safetensors", sd, dict(meta, model_config="[1, 2]")),
        "st-config-junk": _st(root / "cfgjunk.safetensors", sd, dict(meta, model_config="{oops")),
        "st-config-type": _st(
            root / "cfgtype.safetensors", sd, dict(meta, model_config=json.dumps(dict(cfg, depth="2")))
        ),  # fmt: skip
        "st-labels-junk": _st(root / "labels.safetensors", sd, dict(meta, label_names="{oops")),
        "st-flipped-byte": _flip_byte(good_st, root / "flipped.safetensors", -7),
        "st-truncated": _write(root / "trunc.safetensors", good_st.read_bytes()[:300]),
        "official-wrong-shape": _save(root / "official.pt", dict(sd, pos_embed=torch.zeros(1, 5, 32))),
        "official-missing-key": _save(
            root / "official_missing.pt", {k: v for k, v in sd.items() if "fc1" not in k}
        ),  # fmt: skip
    }
    ckpts = {
        "ckpt-wrong-shape": {**ck, "ema": shape},
        "ckpt-missing-key": {**ck, "ema": missing},
        "ckpt-no-config": {k: v for k, v in ck.items() if k != "model_config"},
        "ckpt-huge-config": {**ck, "model_config": huge},
        "ckpt-config-string": {**ck, "model_config": "abc"},
        "ckpt-ema-string": {**ck, "ema": "weights"},
        "ckpt-bad-checksum": {**ck, CHECKSUM_KEY: {"ema": "0" * 64, "model": "0" * 64}},
        "ckpt-unknown-format": {**ck, "format": "something-else"},
        "ckpt-a-list": [1, 2, 3],
    }
    for name, obj in ckpts.items():
        files[name] = _save(root / f"{name}.pt", obj)
    files["ckpt-truncated"] = _write(root / "trunc.pt", good_pt.read_bytes()[:-200])
    return files


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _foreign_files(root: Path) -> dict[str, Path]:
    from PIL import Image

    marker = root / MARKER_NAME
    Image.new("RGB", (4, 4)).save(root / "image.pt", format="PNG")
    (root / "folder").mkdir()
    files = {
        "empty": _write(root / "empty.pt", b""),
        "random-bytes": _write(root / "random.pt", bytes(range(256)) * 8),
        "png-renamed": root / "image.pt",
        "json-renamed": _write(root / "config.pt", b'{"hidden_size": 32}'),
        "json-file": _write(root / "model.json", b'{"hidden_size": 32}'),
        "empty-folder": root / "folder",
        "plain-pickle-runs-code": _write(root / "plain.pt", pickle.dumps({"model": _RunsCode(marker)})),
        "zip-pickle-runs-code": _save(root / "zip.pt", {"model": _RunsCode(marker)}),
        "zip-pickle-object": _save(root / "date.pt", {"when": __import__("datetime").date(2020, 1, 1)}),
        "safetensors-header-junk": _write(
            root / "junk.safetensors", (40).to_bytes(8, "little") + b"{" + b"x" * 60
        ),
    }
    return files


def _folder_files(root: Path, m) -> dict[str, Path]:
    """Model folders whose JSON has the wrong types."""
    out: dict[str, Path] = {}
    for name, change in {
        "diffusers-sample-size-null": {"sample_size": None},
        "diffusers-layers-text": {"num_layers": "1"},
        "diffusers-ids-string": {"_ditkit_id2label": "cat,dog"},
    }.items():
        folder = save_diffusers_transformer(m, root / name)
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, **change}))
        out[name] = folder
    folder = save_diffusers_transformer(m, root / "diffusers-config-list")
    (folder / "config.json").write_text("[1, 2]")
    out["diffusers-config-list"] = folder
    folder = save_diffusers_transformer(m, root / "diffusers-bin-runs-code")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"w": _RunsCode(root / MARKER_NAME)}, folder / "diffusion_pytorch_model.bin")
    out["diffusers-bin-runs-code"] = folder
    folder = save_diffusers_pipeline(m, root / "diffusers-pipeline-ids-string", vae=tiny_vae(root / "vae", 1))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "id2label": "cat"}))
    out["diffusers-pipeline-ids-string"] = folder
    for name, change in {
        "pipeline-id2label-string": {"id2label": "cat"},
        "pipeline-version-text": {"version": "one"},
        "pipeline-extra-list": {"extra": [1]},
        "pipeline-transformer-outside": {"transformer": "../good.safetensors"},
    }.items():
        folder = save_ditkit_pipeline(root / name, m, {0: "a", 1: "b", 2: "c"})
        index = json.loads((folder / "ditkit_pipeline.json").read_text())
        (folder / "ditkit_pipeline.json").write_text(json.dumps({**index, **change}))
        out[name] = folder
    folder = save_ditkit_pipeline(root / "pipeline-flipped-weights", m)
    weights = folder / "transformer.safetensors"
    _flip_byte(weights, weights, -5)
    out["pipeline-flipped-weights"] = folder
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    m = _tiny()
    with torch.no_grad():  # non-zero weights, so a flipped byte changes a value
        for p in m.parameters():
            p.normal_()
    files = {**_ditkit_files(root, m), **_foreign_files(root), **_folder_files(root, m)}
    return root, files


def _one_line_error(capsys, command: str, rc: int, what: str) -> str:
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"{what}: exit {rc}; stderr: {err[-400:]}"
    assert "Traceback" not in out + err, f"{what}: traceback"
    assert len(lines) == 1 and lines[0].startswith(f"ditkit {command}: error: "), f"{what}: {err!r}"
    assert "\x1b[" not in err and "Weights only load failed" not in err, f"{what}: raw torch text: {err!r}"
    return lines[0]


def _names_the_file(line: str, path: Path) -> bool:
    return str(path) in line or path.name in line


COMMANDS = {
    "inspect": lambda p, tmp: ["inspect", str(p)],
    "convert": lambda p, tmp: ["convert", str(p), str(tmp / "out.safetensors"), "--to", "safetensors"],
    "sample": lambda p, tmp: ["sample", "--ckpt", str(p), "--out", str(tmp / "samples"), "--no-progress"],
    "train --init-from": lambda p, tmp: [
        "train",
        "--init-from",
        str(p),
        "--output-dir",
        str(tmp / "runs"),
        "--max-steps",
        "1",
        "--no-progress",
        "--set",
        *TINY_RUN,
    ],  # fmt: skip
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_loader_answers_the_corpus_with_one_line(corpus, command, tmp_path, capsys):
    root, files = corpus
    failures = []
    for name, path in files.items():
        argv = COMMANDS[command](path, tmp_path)
        try:
            rc = main(argv)
            line = _one_line_error(capsys, argv[0], rc, name)
            if not _names_the_file(line, path):
                failures.append(f"{name}: the message names no file: {line}")
        except AssertionError as err:
            failures.append(str(err))
        except BaseException as err:  # noqa: BLE001 - the point is that nothing escapes
            failures.append(f"{name}: raised {type(err).__name__}: {err}"[:300])
    assert not (root / MARKER_NAME).exists(), "a pickle ran code"
    assert not failures, "\n".join(failures)


def test_the_corpus_messages_say_what_is_wrong(corpus, capsys):
    _, files = corpus
    expected = {
        "st-wrong-shape": "x_embedder.proj.bias has shape (7,), expected (32,)",
        "st-missing-key": "missing 1 key(s): x_embedder.proj.bias",
        "st-extra-key": "unexpected 1 key(s): extra",
        "st-int-weights": "expected floating point weights",
        "st-huge-config": "config is damaged",
        "st-oversized-config": "does not fit the tensors",
        "st-config-type": "model depth must be a positive integer",
        "st-flipped-byte": "damaged",
        "ckpt-bad-checksum": "(ema weights): the file is damaged: its weights do not match the checksum",
        "ckpt-no-config": "no model config",
        "ckpt-wrong-shape": "x_embedder.proj.bias has shape (7,), expected (32,)",
        "ckpt-missing-key": "missing 1 key(s): x_embedder.proj.bias",
        "ckpt-huge-config": "config is damaged",
        "ckpt-ema-string": "'ema' must be a state dict of tensors",
        "plain-pickle-runs-code": "refused to load",
        "zip-pickle-runs-code": "refused to load",
        "zip-pickle-object": "(datetime.date)",
        "diffusers-sample-size-null": "sample_size=null",
        "diffusers-layers-text": 'num_layers="1"',
        "pipeline-id2label-string": "id2label is a str",
        "diffusers-bin-runs-code": "diffusion_pytorch_model.bin: refused to load",
        "diffusers-pipeline-ids-string": "model_index.json: id2label is a str",
        "pipeline-flipped-weights": "transformer.safetensors: the file is damaged",
    }
    for name, fragment in expected.items():
        rc = main(["inspect", str(files[name])])
        line = _one_line_error(capsys, "inspect", rc, name)
        assert fragment in line, f"{name}: {line}"


def test_subprocess_exit_code_no_traceback_and_a_closed_pipe(corpus):
    """One real process: its stdout pipe is closed before anything is read (`ditkit info --list | head -0`),
    then a refused pickle: exit codes 0 and 2, one error line, no BrokenPipeError, no traceback."""
    _, files = corpus
    script = (
        "import sys; from ditkit.cli.main import main; "
        f"a = main(['info', '--list']); b = main(['inspect', {str(files['zip-pickle-runs-code'])!r}]); "
        "sys.exit(10 * a + b)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "DITKIT_DEBUG": ""},
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 2, err  # info: 0, inspect: 2
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert err.strip().splitlines() == [err.strip()] and "refused to load" in err


# -- internal errors -------------------------------------------------------------------------------
def test_an_internal_error_says_it_is_a_bug(monkeypatch, capsys):
    import ditkit.cli.info as info

    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr(info, "run", broken)
    assert main(["info", "DiT-S/2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a bug in ditkit" in err and "DITKIT_DEBUG=1" in err, err
    monkeypatch.setenv("DITKIT_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["info", "DiT-S/2"])


# -- checksums and non-finite weights -----------------------------------------------------------------
def test_weights_checksum_detects_a_changed_value_and_names_the_file(tmp_path):
    m = _tiny()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    digest = weights_checksum(state)
    assert digest == weights_checksum({k: v.clone() for k, v in reversed(state.items())})  # order-free
    assert verify_checksum(state, digest, "f") and not verify_checksum(state, None, "f")
    state["x_embedder.proj.bias"][3] += 1e-3
    with pytest.raises(ValueError, match="f: the file is damaged"):
        verify_checksum(state, digest, "f")
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model_config": m.config.to_dict(),
        "model": m.state_dict(),
        "ema": None,
    }
    ckpt[CHECKSUM_KEY] = checkpoint_checksums(ckpt)
    assert set(ckpt[CHECKSUM_KEY]) == {"model"}
    model_from_checkpoint(ckpt, path="run.pt")  # intact
    ckpt["model"] = state
    with pytest.raises(ValueError, match=r"run.pt \(model weights\): the file is damaged"):
        model_from_checkpoint(ckpt, path="run.pt")


def test_check_finite_names_the_first_bad_key(tmp_path):
    from ditkit.io import check_finite, load_any

    m = _tiny()
    with torch.no_grad():
        m.blocks[0].mlp.fc1.weight[1, 2] = float("nan")
    path = save_safetensors(m, tmp_path / "nan.safetensors")
    assert load_any(path).model is not None  # inspecting a diverged model still works
    with pytest.raises(
        ValueError, match=r"nan.safetensors: weight blocks.0.mlp.fc1.weight holds 1 non-finite"
    ):
        load_any(path, require_finite=True)
    with pytest.raises(ValueError, match=r"at index \[1, 2\]"):
        check_finite(m.state_dict(), "x")


# -- output folders, full disks, file modes ----------------------------------------------------------
def test_output_folder_that_is_a_file_or_unwritable(tmp_path, monkeypatch):
    a_file = _write(tmp_path / "file", b"x")
    with pytest.raises(ValueError, match="must be a folder, but a file is there"):
        prepare_output_dir(a_file, "--out")
    with pytest.raises(ValueError, match="a parent of it is a file"):
        prepare_output_dir(a_file / "sub", "--out")
    with pytest.raises(ValueError, match="a parent of it is a file"):
        atomic_write(a_file / "x.pt", lambda tmp: None)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(ValueError, match="is a read-only file system"):
        prepare_output_dir(tmp_path / "new", "--out")


def test_a_full_disk_keeps_the_last_good_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"good"))

    def full(tmp):
        Path(tmp).write_bytes(b"par")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(
        ValueError, match=r"ckpt.pt: cannot write: no space left on /.*; the previous file is kept"
    ):
        atomic_write(target, full)
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary file left

    class SafetensorError(Exception):  # how safetensors reports it
        pass

    def safetensors_full(tmp):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(ValueError, match="no space left on"):
        atomic_write(target, safetensors_full)

    def torch_full(tmp):  # torch.save hides the cause: the file system has to be asked
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    with pytest.raises(RuntimeError, match="unexpected pos"):  # with space left: not a full disk
        atomic_write(target, torch_full)
    monkeypatch.setattr("ditkit.io.native._nearly_full", lambda folder: True)
    with pytest.raises(ValueError, match="no space left on"):
        atomic_write(target, torch_full)
    assert target.read_bytes() == b"good"


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        path = atomic_write(tmp_path / "b.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


# -- encode: a 1-channel VAE, a file as --out, NaN latents in a cache ------------------------------------
@pytest.fixture(scope="module")
def one_channel_cache(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("enc1")
    data = class_folder(tmp / "data", per_class=2)
    vae = tiny_vae(tmp / "vae", latent_channels=1)
    out = tmp / "cache"
    argv = ["encode", "--data", str(data), "--vae", str(vae), "--out", str(out), "--image-size", "16"]
    assert main([*argv, "--no-progress", "--batch-size", "3"]) == 0
    return tmp, data, vae, out


def test_encode_with_a_one_channel_vae(one_channel_cache):
    from ditkit.data.latents import LatentCache

    cache = LatentCache(one_channel_cache[3])
    assert cache.latent_shape == (1, 8, 8) and len(cache) == 4
    moments, _ = cache.load_moments(torch.arange(4))
    assert moments.shape == (4, 2, 2, 1, 8, 8) and bool(torch.isfinite(moments).all())


def test_encode_out_is_a_file(one_channel_cache, capsys):
    tmp, data, vae, _ = one_channel_cache
    a_file = _write(tmp / "not-a-folder", b"x")
    rc = main(["encode", "--data", str(data), "--vae", str(vae), "--out", str(a_file), "--no-progress"])
    assert "must be a folder" in _one_line_error(capsys, "encode", rc, "encode --out FILE")


def test_encode_bad_vae_folders_and_data(one_channel_cache, capsys, tmp_path):
    _, data, vae, _ = one_channel_cache
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{oops")
    (bad_json / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    junk_weights = tmp_path / "junkweights"
    junk_weights.mkdir()
    (junk_weights / "config.json").write_text((Path(vae) / "config.json").read_text())
    (junk_weights / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    for bad in (bad_json, junk_weights, tmp_path / "missing", _write(tmp_path / "vae.pt", b"x")):
        rc = main(["encode", "--data", str(data), "--vae", str(bad), "--out", str(tmp_path / "o")])
        line = _one_line_error(capsys, "encode", rc, f"--vae {bad.name}")
        assert bad.name in line and "huggingface-cli" not in line
    (tmp_path / "nothing").mkdir()
    malformed = _manifest_folder(tmp_path / "malformed", ["images/0.png,cat", "images/1.png,dog,x"])
    bad_data = {
        "a .pt file": _write(tmp_path / "data.pt", b"x"),
        "an empty folder": tmp_path / "nothing",
        "a malformed manifest": malformed / "labels.csv",
        "a junk parquet file": _write(tmp_path / "t.parquet", os.urandom(64)),
        "a junk arrow file": _write(tmp_path / "t.arrow", os.urandom(64)),
    }
    for what, bad in bad_data.items():
        rc = main(["encode", "--data", str(bad), "--vae", str(vae), "--out", str(tmp_path / "o2")])
        assert bad.name in _one_line_error(capsys, "encode", rc, f"--data {what}")


def test_nan_latents_in_a_cache_name_the_shard_and_row(one_channel_cache, tmp_path):
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    from ditkit.data.latents import LatentCache

    cache = shutil.copytree(one_channel_cache[3], tmp_path / "cache")
    shard = next(cache.glob("shard-*.safetensors"))
    with safe_open(str(shard), framework="pt") as fh:
        tensors, meta = {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()
    tensors["mean"][2, 1, 0, 3, 3] = float("nan")
    save_file(tensors, str(shard), metadata=meta)
    with pytest.raises(
        ValueError, match=rf"{shard.name}: non-finite latents \(NaN/inf\) at row 2 of the shard"
    ):
        LatentCache(cache)
    streamed = LatentCache(cache, max_memory=0)  # large caches: checked as rows are read
    streamed.load_moments(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at row 2 of the shard"):
        streamed.load_moments(torch.tensor([3, 2]))


# -- data: malformed manifests, paths outside the data folder, non-finite float images -------------------
def _manifest_folder(root: Path, rows: list[str]) -> Path:
    for i in range(3):
        solid(root / "images" / f"{i}.png", (200, 10 * i, 0))
    (root / "labels.csv").write_text("file_name,label\n" + "".join(r + "\n" for r in rows))
    return root


def test_a_malformed_manifest_row_is_an_error_not_unconditional_training(tmp_path):
    from ditkit.data.sources import open_dataset

    ok = open_dataset(_manifest_folder(tmp_path / "ok", ["images/0.png,cat", "images/1.png,dog"]), 8)
    assert ok.label_names == ["cat", "dog"]
    root = _manifest_folder(
        tmp_path / "bad", ["images/0.png,cat", "images/1.png,dog,extra", "images/2.png,cat"]
    )
    with pytest.raises(ValueError, match=r"labels.csv: row 2 \(line 3\) has 3 fields, the header has 2"):
        open_dataset(root, 8)
    root = _manifest_folder(tmp_path / "short", ["images/0.png,cat", "images/1.png"])
    with pytest.raises(ValueError, match=r"labels.csv: row 2 \(line 3\) has 1 field\(s\), the header has 2"):
        open_dataset(root, 8)
    (tmp_path / "j").mkdir()
    solid(tmp_path / "j" / "a.png", (1, 2, 3))
    (tmp_path / "j" / "meta.jsonl").write_text('{"file_name": "a.png", "label": "x"}\n{"file_name": oops}\n')
    with pytest.raises(ValueError, match=r"meta.jsonl: row 2 \(line 2\) is not valid JSON"):
        open_dataset(tmp_path / "j", 8)


def test_manifest_paths_outside_the_data_folder_are_refused(tmp_path):
    from ditkit.data.sources import open_dataset

    outside = solid(tmp_path / "elsewhere" / "x.png", (1, 2, 3))
    root = _manifest_folder(tmp_path / "data", ["images/0.png,cat", "../elsewhere/x.png,dog"])
    with pytest.raises(
        ValueError, match=r"row 2 names '../elsewhere/x.png', outside the data folder .*allow_outside_paths"
    ):
        open_dataset(root, 8)
    (root / "labels.csv").write_text(f"file_name,label\nimages/0.png,cat\n{outside},dog\n")
    with pytest.raises(ValueError, match="outside the data folder"):
        open_dataset(root, 8)
    ds = open_dataset(root, 8, allow_outside_paths=True)
    assert ds.files[1] == outside and len(ds) == 2
    # the config key the refusal names, and the train flag for it
    from ditkit.cli.train import _overrides
    from ditkit.config import load_config
    from ditkit.data import build_dataset

    cfg = load_config(None, [f"data.path={root}", "data.allow_outside_paths=true"])
    assert build_dataset(cfg.data).files[1] == outside
    with pytest.raises(ValueError, match="outside the data folder"):
        build_dataset(load_config(None, [f"data.path={root}"]).data)
    parser = __import__("argparse").ArgumentParser()
    from ditkit.cli import train as train_cli

    train_cli.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--data", str(root), "--allow-outside-paths"])
    assert "data.allow_outside_paths=true" in _overrides(args)
    (root / "images" / "sub").mkdir()
    (root / "labels.csv").write_text("file_name,label\nimages/sub/../0.png,cat\n")  # stays inside
    assert len(open_dataset(root, 8)) == 1


def test_table_paths_outside_the_data_folder_are_skipped_and_named(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from ditkit.data.sources import open_dataset

    solid(tmp_path / "elsewhere" / "x.png", (1, 2, 3))
    solid(tmp_path / "data" / "in.png", (4, 5, 6))
    table = pa.table({"image": ["in.png", "../elsewhere/x.png"], "label": ["a", "b"]})
    pq.write_table(table, tmp_path / "data" / "t.parquet")
    batch = open_dataset(tmp_path / "data" / "t.parquet", 8).load_batch(torch.tensor([1]))
    assert len(batch.skipped) == 1 and "outside the data folder" in batch.skipped[0][1]
    assert batch.labels.tolist() == [0]  # the next readable image, with its own label
    allowed = open_dataset(tmp_path / "data" / "t.parquet", 8, allow_outside_paths=True)
    assert not allowed.load_batch(torch.tensor([1])).skipped


def test_a_float_tiff_with_a_nan_pixel_is_skipped_and_named(tmp_path):
    import numpy as np
    from PIL import Image

    from ditkit.data.folder import FolderDataset
    from ditkit.data.images import UnreadableImage, decode_image

    (tmp_path / "a").mkdir()
    pixels = np.full((8, 8), 0.5, np.float32)
    Image.fromarray(pixels, mode="F").save(tmp_path / "a" / "ok.tif")
    pixels[2, 3] = np.nan
    Image.fromarray(pixels, mode="F").save(tmp_path / "a" / "nan.tif")
    assert decode_image(tmp_path / "a" / "ok.tif", 8)[0].max() == 128
    with pytest.raises(UnreadableImage, match="1 non-finite pixel value"):
        decode_image(tmp_path / "a" / "nan.tif", 8)
    ds = FolderDataset(tmp_path / "a", 8)
    batch = ds.load_batch(torch.arange(len(ds)))
    assert [Path(f).name for f, _ in batch.skipped] == ["nan.tif"]
    assert bool((batch.images > -1).all())  # nothing decoded to black


# -- encoders: open_clip weights are checked before open_clip sees them -----------------------------------
def test_open_clip_weights_that_would_run_code_or_are_junk(tmp_path, monkeypatch):
    from ditkit.encoders import load_encoder

    marker = tmp_path / MARKER_NAME
    evil = _save(tmp_path / "clip.pt", {"state_dict": _RunsCode(marker)})
    junk = _write(tmp_path / "clip.bin", os.urandom(512))
    for bad, fragment in ((evil, "refused to load"), (junk, "not a readable checkpoint")):
        with pytest.raises(ValueError, match=fragment) as info:
            load_encoder(f"open_clip:ViT-B-32:{bad}")
        assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()

    class FakeOpenClip:  # open_clip is optional: a stand-in that knows one architecture
        @staticmethod
        def list_models():
            return ["ViT-B-32", "ViT-L-14"]

    monkeypatch.setitem(sys.modules, "open_clip", FakeOpenClip)
    good = _st(tmp_path / "clip.safetensors", {"w": torch.zeros(2)}, {})
    with pytest.raises(
        ValueError, match=r"unknown open_clip architecture 'vit-b-23' \(did you mean ViT-B-32"
    ):
        load_encoder(f"open_clip:vit-b-23:{good}")


# -- presets and info ----------------------------------------------------------------------------------
def test_info_reports_what_the_default_trains(capsys):
    assert main(["info", "DiT-Digits"]) == 0
    out = capsys.readouterr().out
    assert "1x8x8" in out and "classes          10 (+ null)" in out and "1,272,840 trainable" in out


def test_preset_names_are_case_insensitive_with_suggestions(capsys):
    from ditkit.presets import model_config

    assert model_config("dit-xl/2").name == "DiT-XL/2" and model_config("DIT-DIGITS").depth == 4
    rc = main(["info", "DiT-XL/3"])
    line = _one_line_error(capsys, "info", rc, "unknown preset")
    assert "did you mean" in line and "DiT-XL/2" in line.split("valid models")[0]


# -- friction: messages for the command line, no dependency noise -------------------------------------------
def test_vae_load_is_quiet_and_messages_speak_cli(tmp_path, capfd):
    from ditkit.codecs import VAECodec, find_vae_folder

    vae = tiny_vae(tmp_path / "vae")
    capfd.readouterr()
    VAECodec.from_pretrained(vae)
    out, err = capfd.readouterr()
    assert "accelerate" not in out + err
    with pytest.raises(FileNotFoundError) as info:
        find_vae_folder(tmp_path / "sd-vae-ft-ema")
    assert "hf download" in str(info.value) and "huggingface-cli" not in str(info.value)
    m = _tiny()
    folder = save_diffusers_transformer(m, tmp_path / "diffusers")
    loaded = ditkit.io.load_any(folder)
    assert loaded.notes and not any("arithmetic='official'" in n for n in loaded.notes)
