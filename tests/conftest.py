"""Shared fixtures. Each xdist worker gets one torch thread so two workers share the two cores fairly."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """An empty data root for download/folder loaders; the loaders' cache is cleared around the test."""
    from poisonbook import data

    monkeypatch.setenv("POISONBOOK_DATA", str(tmp_path))
    monkeypatch.delenv("POISONBOOK_DOWNLOAD", raising=False)
    data._raw_at.cache_clear()
    yield tmp_path
    data._raw_at.cache_clear()
