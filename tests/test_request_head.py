"""The proxy reads only a request's head (model, stream, max_tokens, metadata), yet judges the whole body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccgate.errors import InvalidRequestError
from ccgate.proxy.engine import parse_messages_head

HEAD_FIELDS = ("model", "stream", "max_tokens", "metadata", "speed")

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(
    model=st.text(min_size=1),
    extra=st.dictionaries(st.text(max_size=12), _json_values, max_size=6),
    head=st.fixed_dictionaries({}, optional={field: _json_values for field in HEAD_FIELDS[1:]}),
)
def test_the_head_equals_what_a_full_parse_reads(model: str, extra: dict[str, Any], head: dict[str, Any]) -> None:
    body = {**extra, **head, "model": model}
    raw = json.dumps(body).encode()
    parsed = parse_messages_head(raw)
    reference = json.loads(raw)
    assert {field: parsed.get(field) for field in HEAD_FIELDS} == {field: reference.get(field) for field in HEAD_FIELDS}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "messages": [{"role": "user"}',  # truncated
        b'{"model": "m"} trailing',
        b'{"model": "m", "messages": [tru]}',  # a bad literal deep in what is skipped
        b'{"model": "m", "messages": ["\\q"]}',  # a bad escape in what is skipped
        b'{"model": "m", "n": 01}',
        b'[{"model": "m"}]',
        b"",
    ],
)
def test_malformed_bodies_are_refused_even_where_the_proxy_does_not_look(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse_messages_head(raw)
    assert refused.value.status == 400


def test_deep_nesting_is_read_or_refused_cleanly_never_a_crash() -> None:
    """msgspec and `json` stop near 1,000 levels on Python 3.11 (deeper on 3.12+), orjson at 1,024: below
    that the fallback reads the body; beyond what the interpreter parses the client gets the usual 400."""

    def nested(depth: int) -> bytes:
        return b'{"model": "m", "stream": true, "messages": ' + b"[" * depth + b"]" * depth + b"}"

    assert parse_messages_head(nested(1010))["stream"] is True
    try:
        assert parse_messages_head(nested(1100))["stream"] is True  # Python 3.12+
    except InvalidRequestError as error:  # Python 3.11
        assert error.status == 400 and "nested too deeply" in error.message
    with pytest.raises(InvalidRequestError, match="nested too deeply") as refused:
        parse_messages_head(nested(100_000))
    assert refused.value.status == 400


def test_estimating_a_deep_body_never_recurses() -> None:
    from ccgate.wire.translate import estimate_input_tokens

    deep: list[object] = ["four"]
    for _ in range(50_000):
        deep = [deep]
    # "user" and "four" read, ~4 characters a token, plus 4 tokens of overhead per message
    assert estimate_input_tokens({"messages": [{"role": "user", "content": deep}]}) == len("userfour") // 4 + 4


@pytest.mark.parametrize(
    "raw", [b'{"messages": []}', b'{"model": ""}', b'{"model": 4}', b'{"model": null, "stream": true}']
)
def test_a_missing_or_odd_model_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError, match="model"):
        parse_messages_head(raw)


def test_what_json_accepts_and_msgspec_does_not_still_passes() -> None:
    # a JavaScript string cut inside an emoji is serialised as a lone surrogate escape; NaN is what `json` allows
    lone = b'{"model": "m", "messages": [{"role": "user", "content": "cut \\ud83d"}], "stream": true}'
    head = parse_messages_head(lone)
    assert (head["model"], head.get("stream"), head.get("max_tokens")) == ("m", True, None)
    assert parse_messages_head(b'{"model": "m", "temperature": NaN}')["model"] == "m"
