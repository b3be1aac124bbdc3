"""`ditkit convert` and `ditkit inspect`: output, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import builtins
import subprocess
import sys

import pytest
import torch

import ditkit
from ditkit.cli.main import main
from ditkit.io import load_any, save_official

TINY = ditkit.ModelConfig(depth=2, hidden_size=64, num_heads=1, patch_size=2, input_size=8, num_classes=1000)


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    model = ditkit.build_model(TINY)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    path = tmp_path_factory.mktemp("ckpt") / "DiT-tiny.pt"
    save_official(model, path)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_official_file(capsys, official_file):
    code, out, err = run_cli(capsys, "inspect", official_file)
    assert code == 0 and err == ""
    assert "format        official-state-dict" in out
    assert "depth 2, width 64, 1 heads, patch 2" in out
    assert "classes       1000 + null" in out
    assert "EMA           n/a" in out
    assert "labels        1000 names; 0: tench, Tinca tinca, 1: goldfish" in out
    assert "arithmetic    official" in out


def test_convert_to_every_format_and_back(capsys, tmp_path, official_file):
    original = torch.load(official_file, weights_only=True)
    code, out, _ = run_cli(capsys, "convert", official_file, tmp_path / "diff", "--to", "diffusers")
    assert code == 0 and "wrote  " in out and "note   diffusers runs the model with its own arithmetic" in out
    code, out, _ = run_cli(
        capsys, "convert", tmp_path / "diff", tmp_path / "w.safetensors", "--to", "safetensors"
    )
    assert code == 0
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "w.safetensors")
    assert "format        ditkit-safetensors" in out and "arithmetic    diffusers" in out
    code, out, _ = run_cli(
        capsys, "convert", tmp_path / "w.safetensors", tmp_path / "back.pt", "--to", "official"
    )
    assert code == 0 and "uses diffusers arithmetic" in out
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)
    code, out, _ = run_cli(
        capsys, "convert", official_file, tmp_path / "half.pt", "--to", "official", "--dtype", "fp16"
    )
    assert code == 0 and load_any(tmp_path / "half.pt").model.x_embedder.proj.weight.dtype == torch.float16


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, official_file):
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    marker = tmp_path / "pwned"
    torch.save({"x": Evil(marker)}, tmp_path / "evil.pt")
    (tmp_path / "out.pt").write_bytes(b"")
    cases = [
        (("inspect", tmp_path / "missing.pt"), "missing.pt: no such file"),
        (("inspect", tmp_path / "junk.pt"), "junk.pt: not a readable checkpoint"),
        (("inspect", tmp_path / "evil.pt"), "evil.pt: refused to load"),
        (("convert", official_file, tmp_path / "out.pt", "--to", "official"), "already exists; pass --force"),
        (
            ("convert", official_file, tmp_path / "p", "--to", "official", "--pipeline"),
            "--pipeline applies to",
        ),
        (("convert", official_file, tmp_path / "p", "--to", "diffusers", "--pipeline"), "needs a VAE"),
        (("convert", official_file, official_file, "--to", "official", "--force"), "the output is the input"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, argv
        assert err.startswith(f"ditkit {argv[0]}: error: ") and message in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not marker.exists()


def test_non_official_variants_refuse_official_and_diffusers_export(capsys, tmp_path):
    config = TINY.replace(num_classes=10)
    if "pos_embed" not in ditkit.ModelConfig.__dataclass_fields__:
        pytest.skip("this ModelConfig has no variants")
    model = ditkit.build_model(config.replace(pos_embed="learned"))
    ditkit.io.save_safetensors(model, tmp_path / "v.safetensors")
    for target in ("official", "diffusers"):
        code, _, err = run_cli(
            capsys, "convert", tmp_path / "v.safetensors", tmp_path / target, "--to", target
        )
        assert code == 2 and "pos_embed='learned'" in err and "save it as ditkit safetensors" in err


def test_cli_process_prints_no_traceback(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 64)
    proc = subprocess.run(
        [sys.executable, "-m", "ditkit.cli.main", "inspect", str(tmp_path / "junk.bin")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "not a readable checkpoint" in proc.stderr
