"""One option schema: the Python API, `bench --methods` overrides and the server's request body accept and refuse
the same values with the same message; and no request body, however odd, gets anything but a parse or a 400."""

import json
from dataclasses import fields, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specguard_local import api
from specguard_local.bench import method_variant
from specguard_local.decoders.options import SCHEMA, Options, parse_text, typed, validate
from specguard_local.errors import OptionError, SpecGuardError
from specguard_local.serve.chat import RequestError, parse_request

BAD = [("seed", -1), ("tau", -0.1), ("k", 0), ("max_tokens", 0), ("top_p", 0.0), ("temperature", 3.0),
       ("beta", 1.5), ("draft_p_min", 2.0), ("layers", 2), ("lam", -1.0), ("delta", -7.0), ("draft_max", 0)]
GOOD = [("tau", 1.01), ("tau", 0.0), ("lam", 1.01), ("delta", 1.01), ("seed", 2 ** 40), ("temperature", 0.0), ("draft_p_min", 0.0), ("k", 3)]


def body(**options):
    return {"model": "specguard", "messages": [{"role": "user", "content": "What is 2 + 2?"}], **options}


def test_every_option_is_declared_once():
    assert set(SCHEMA) == {f.name for f in fields(Options)}
    assert {name for name, spec in SCHEMA.items() if not spec.request} == {"probe", "profile"}  # paths: the server's


@pytest.mark.parametrize("name, value", BAD)
def test_a_bad_value_is_refused_alike_everywhere(name, value):
    with pytest.raises(OptionError) as from_api:
        api.check("specguard", replace(Options(), **{name: value}))
    with pytest.raises(SpecGuardError) as from_bench:
        method_variant(f"specguard:{name}={value}")
    with pytest.raises(RequestError) as from_server:
        parse_request(body(**{name: value}), max_k=4)
    message = str(from_api.value)
    assert from_api.value.param == name and message.startswith(f"{name} must be ")
    assert message in str(from_bench.value)
    assert from_server.value.status == 400 and from_server.value.message == message
    assert from_server.value.param == name


@pytest.mark.parametrize("name, value", GOOD)
def test_a_good_value_is_accepted_alike_everywhere(name, value):
    api.check("specguard", replace(Options(), **{name: value}))
    assert method_variant(f"specguard:{name}={value}") == ("specguard", {name: value})
    assert getattr(parse_request(body(**{name: value}), max_k=4).options, name) == value


def test_tau_above_one_means_never_keep_and_is_accepted_by_the_server():
    assert parse_request(body(tau=1.01), max_k=4).options.tau == 1.01


def test_text_values_are_typed_by_the_schema():
    assert parse_text("adapt", "false") is False and parse_text("k", "2") == 2 and parse_text("tau", "1") == 1.0
    for name, text in (("adapt", "maybe"), ("k", "1.5"), ("tau", "high"), ("nope", "1")):
        with pytest.raises(OptionError):
            parse_text(name, text)
    assert typed("tau", 1) == 1.0  # an int where a number is expected
    with pytest.raises(OptionError):
        typed("k", True)  # a bool is never a number
    validate(Options())


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=3), max_leaves=8)
OPTION_NAMES = st.sampled_from(sorted(SCHEMA) + ["max_completion_tokens", "stream", "stop", "n", "model",
                                                   "messages", "stream_options"])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(OPTION_NAMES, JSON, max_size=4))
def test_any_option_values_give_a_request_or_a_400(options):
    try:
        req = parse_request({**body(), **options}, max_k=4)
    except RequestError as exc:
        assert exc.status == 400 and exc.message
        json.dumps(exc.body())
        return
    api.check(req.method, req.options)  # what parses also passes the decoders' own check (or a SpecGuardError)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_any_json_body_gives_a_request_or_a_400(anything):
    try:
        parse_request(anything, max_k=4)
    except RequestError as exc:
        assert exc.status == 400


MESSAGE = st.dictionaries(st.sampled_from(["role", "content", "name"]), JSON | st.sampled_from(["user", "system"]),
                          max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(MESSAGE | JSON, max_size=3))
def test_any_messages_give_a_request_or_a_400(messages):
    try:
        parse_request({"model": "target", "messages": messages}, max_k=4)
    except RequestError as exc:
        assert exc.status == 400
