"""Shared fixtures: a tiny random GGUF loaded by real llama.cpp, and the embedded real draft/target pair."""

from __future__ import annotations

import pytest

from tiny_gguf import write_tiny_model

NATALIA = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
           "How many clips did Natalia sell altogether in April and May?")


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", n_layer=4)


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    from specguard_local.engine import Model

    model = Model(tiny_path)
    yield model
    model.close()


@pytest.fixture(scope="session")
def real_runtime():
    """The default pair, assembled from the installed `[models]` packages on first use."""
    from specguard_local.runtime import Runtime, RuntimeConfig

    with Runtime(RuntimeConfig(n_ctx=2048)) as rt:
        yield rt
