"""Watching a run: the progress GIF of sample grids and the loss by noise-level bin."""

import numpy as np
import pytest
from PIL import Image

from ditkit.train.monitor import loss_by_timestep_bin, write_progress_gif


def test_progress_gif_has_one_frame_per_grid(tmp_path):
    paths = []
    for i, size in enumerate([(20, 10), (20, 10), (24, 12)]):
        p = tmp_path / f"grid_{i}.png"
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)).save(p)
        paths.append(p)
    out = write_progress_gif([*paths, tmp_path / "missing.png"], tmp_path / "progress.gif")
    with Image.open(out) as gif:
        assert gif.n_frames == 3 and gif.size == (24, 12)
        gif.seek(2)
        assert gif.info["duration"] == 2000  # the last grid is held longer
    assert write_progress_gif([], tmp_path / "none.gif") is None


def test_loss_by_timestep_bin_known_answer():
    t = [0.0, 0.1, 0.3, 0.5, 0.74, 0.99, 1.0]
    loss = [1.0, 3.0, 5.0, 6.0, 8.0, 10.0, 20.0]
    assert loss_by_timestep_bin(t, loss) == {
        "loss_t0.00-0.25": 2.0,
        "loss_t0.25-0.50": 5.0,
        "loss_t0.50-0.75": 7.0,
        "loss_t0.75-1.00": 15.0,
    }
    assert loss_by_timestep_bin([0.9], [1.0], bins=2) == {"loss_t0.50-1.00": 1.0}  # empty bins left out
    with pytest.raises(ValueError, match="one of each"):
        loss_by_timestep_bin([0.1, 0.2], [1.0])
