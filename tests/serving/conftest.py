"""Fixtures of the serving tests."""

import pytest

from codegemma.serving import cli as serving_cli


@pytest.fixture
def no_loading(monkeypatch):
    """`codegemma serve` refuses a bad flag before it loads a model; no API key comes from the
    environment."""

    def refuse(args):
        raise AssertionError("the model must not load when a flag is bad")

    monkeypatch.setattr(serving_cli, "load_model", refuse)
    monkeypatch.delenv("CODEGEMMA_API_KEY", raising=False)
