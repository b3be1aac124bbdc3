"""Shared test setup: tiny models run fastest single-threaded (and don't fight parallel test workers)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny tensors, whatever an earlier test (a training run with
    train.threads=0) left behind: threads only add synchronisation there, which on a loaded 2-core machine
    made a 1000-step loop 80x slower. The previous setting is restored afterwards.
    Use: `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def offline_gradio_env(monkeypatch):
    """What the demo sets for Gradio (no analytics, no hub); monkeypatch puts the environment back afterwards.
    Use: `pytestmark = pytest.mark.usefixtures("offline_gradio_env")`."""
    for key, value in (
        ("GRADIO_ANALYTICS_ENABLED", "False"),
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ):
        monkeypatch.setenv(key, value)
