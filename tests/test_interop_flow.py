"""A flow-matching model through the diffusers format: ditkit records its time convention and process in
config.json (private keys diffusers ignores) and reads them back; formats that cannot say so are refused."""

from __future__ import annotations

import json

import pytest
import torch

import ditkit
from ditkit.io import convert, load_any
from ditkit.pipeline import DiTPipeline


def _flow_pipeline_folder(tmp_path):
    torch.manual_seed(0)
    model = ditkit.create_model(
        "DiT-Digits", input_size=8, in_channels=1, num_classes=10, learn_sigma=False, time_input="flow",
        depth=1, hidden_size=32, num_heads=2,
    )  # fmt: skip
    for p in model.parameters():  # adaLN-Zero starts at exactly 0: give the outputs something to compare
        p.data.add_(0.02 * torch.randn_like(p))
    pipe = DiTPipeline(model, id2label={i: str(i) for i in range(10)},
                       flow_process={"kind": "flow", "shift": 3.0})  # fmt: skip
    return model, pipe.save_pretrained(tmp_path / "flow-pipe")


def test_flow_model_round_trips_through_a_diffusers_folder(tmp_path):
    from diffusers import DiTTransformer2DModel

    model, folder = _flow_pipeline_folder(tmp_path)
    result = convert(folder, tmp_path / "dd", to="diffusers")
    assert any("time convention ('flow')" in n for n in result.notes)
    cfg = json.loads((tmp_path / "dd" / "config.json").read_text())
    assert cfg["_ditkit_time_input"] == "flow" and cfg["_ditkit_process"]["shift"] == 3.0
    DiTTransformer2DModel.from_pretrained(str(tmp_path / "dd"))  # diffusers still loads it

    loaded = load_any(tmp_path / "dd")
    assert loaded.config.time_input == "flow" and loaded.extra["process"]["shift"] == 3.0
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([250.0, 900.0]), torch.tensor([3, 7])
    with torch.no_grad():  # same weights; diffusers arithmetic differs from the official one in the last bits
        torch.testing.assert_close(loaded.model(x, t, y), model(x, t, y), rtol=0, atol=2e-3)
    back = DiTPipeline.from_pretrained(tmp_path / "dd")
    orig = DiTPipeline.from_pretrained(folder)
    assert back.is_flow and orig.is_flow and back.flow_process["shift"] == 3.0
    kw = dict(num_inference_steps=4, guidance_scale=1.5, output_type="pt", sampler="euler")
    a = orig([3, 7], generator=torch.Generator().manual_seed(1), **kw)
    b = back([3, 7], generator=torch.Generator().manual_seed(1), **kw)
    assert a.images.shape == (2, 1, 8, 8) and torch.allclose(a.images, b.images, atol=2e-2)
    assert a.info["grid"] == b.info["grid"]  # the shifted grid came back with the process


def test_formats_that_would_make_a_flow_model_ddpm_are_refused(tmp_path):
    _, folder = _flow_pipeline_folder(tmp_path)
    with pytest.raises(ValueError, match="flow-matching model .* official .pt file cannot say so"):
        convert(folder, tmp_path / "x.pt", to="official")
    with pytest.raises(ValueError, match="diffusers DiTPipeline folder"):
        convert(folder, tmp_path / "p", to="diffusers", pipeline=True)
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "p").exists()


def test_a_ddpm_export_has_no_time_key(tmp_path):
    model = ditkit.create_model("DiT-Digits", input_size=8, in_channels=1, num_classes=10, depth=1,
                                hidden_size=32, num_heads=2)  # fmt: skip
    folder = DiTPipeline(model).save_pretrained(tmp_path / "ddpm")
    convert(folder, tmp_path / "dd", to="diffusers")
    cfg = json.loads((tmp_path / "dd" / "config.json").read_text())
    assert "_ditkit_time_input" not in cfg and "_ditkit_process" not in cfg
    assert load_any(tmp_path / "dd").config.time_input == "ddpm"
