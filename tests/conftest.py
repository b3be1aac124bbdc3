"""Shared test setup: tiny models run fastest single-threaded (and don't fight parallel test workers)."""

import torch

torch.set_num_threads(1)
