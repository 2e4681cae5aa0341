"""The one rule that ends every answer (decoders/drivers.py), through every decoder on real llama.cpp with tiny
random models that never emit end-of-generation: the answer stops exactly at the token budget or exactly when
prompt + answer fill the context, and its last step says which."""

import pytest

from specguard_local import api
from specguard_local.decoders import METHODS
from specguard_local.runtime import Runtime, RuntimeConfig
from specguard_local.verify.signals import Profile
from tiny_gguf import write_tiny_model

N_CTX = 256
QUESTION = "Tell me a long story about numbers."


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drivers")
    draft = write_tiny_model(folder / "draft.gguf", seed=1, n_layer=4, endless=True)
    target = write_tiny_model(folder / "target.gguf", seed=0, n_layer=6, endless=True)
    with Runtime(RuntimeConfig(draft=str(draft), target=str(target), n_ctx=N_CTX)) as rt:
        profile = folder / "profile.json"
        Profile(logprob_lo=-12.0, logprob_hi=0.0, grounding_lo=0.0, grounding_hi=1.0, taus={"signals": 0.5},
                draft=rt.ids["draft"], target=rt.ids["target"]).save(profile)
        yield rt, str(profile)


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
