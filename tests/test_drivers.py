"""The one rule that ends every answer (decoders/drivers.py), through every decoder on real llama.cpp with tiny
random models that never emit end-of-generation: the answer stops exactly at the token budget or exactly when
prompt + answer fill the context, and its last step says which."""

import pytest

from specguard_local import api
from specguard_local.decoders import METHODS
from conftest import open_tiny_pair

N_CTX = 256
QUESTION = "Tell me a long story about numbers."


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    with open_tiny_pair(tmp_path_factory.mktemp("drivers"), endless=True, n_ctx=N_CTX, taus={"signals": 0.5}) as pair:
        yield pair.rt, str(pair.profile)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_decoder_ends_at_the_budget(endless, method):
    rt, profile = endless
    result = api.solve(QUESTION, method, rt, max_tokens=40, max_step_tokens=16, profile=profile)
    assert result.stats["tokens"] == 40 and result.stats["ended"] == "budget"
    assert [s.stop for s in result.steps[:-1]] == [s.stop for s in result.steps[:-1] if s.stop in ("step", "cap")]
    assert [s.index for s in result.steps] == list(range(len(result.steps)))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_decoder_ends_when_the_context_is_full(endless, method):
    rt, profile = endless
    n_prompt = len(rt.prompt_tokens(QUESTION))
    result = api.solve(QUESTION, method, rt, max_tokens=1000, max_step_tokens=32, profile=profile)
    assert result.stats["ended"] == "context"
    assert n_prompt + result.stats["tokens"] == N_CTX  # the context is used to its last token, never beyond
