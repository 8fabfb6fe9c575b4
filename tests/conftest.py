"""Shared fixtures: keep everything offline and small."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny tensors; spare the second core and avoid OpenMP oversubscription


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
