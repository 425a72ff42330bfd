"""The `x-ccgate-*` attribution headers: any project round-trips as ASCII; whatever arrives decodes or drops."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ccgate.core import attribution

_NO_CONTROLS = st.text(
    alphabet=st.characters(
        blacklist_categories=["Cs"],
        blacklist_characters=[chr(c) for c in range(32)] + [chr(c) for c in range(127, 160)],
    ),
    min_size=1,
    max_size=300,
)


@settings(deadline=None)
@given(project=_NO_CONTROLS)
def test_any_project_travels_as_ascii_and_comes_back_the_same(project: str) -> None:
    headers = attribution.encode(project, "session-1", "launch-1")
    assert all(value.isascii() and "\n" not in value for value in headers.values())
    assert attribution.decode(headers) == (project, "session-1", "launch-1")


@settings(deadline=None)
@given(project=st.text(max_size=50), session=st.text(max_size=50), launch=st.text(max_size=50))
def test_decoding_anything_never_fails_and_keeps_no_control_characters(project: str, session: str, launch: str) -> None:
    got = attribution.decode(
        {attribution.PROJECT_HEADER: project, attribution.SESSION_HEADER: session, attribution.LAUNCH_HEADER: launch}
    )
    for value in got:
        assert value is None or not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value)
    assert got[1] in (None, session) and got[2] in (None, launch)


def test_unusable_values_are_left_out() -> None:
    assert attribution.encode("a\nb", "has space", "sk-ant-secret") == {}
    assert attribution.encode("/home/bad-\udcff-bytes", None, None) == {}  # not UTF-8: never a failed request
    assert attribution.encode("x" * (attribution.MAX_PROJECT + 1), None, "y" * 201) == {}
    assert attribution.decode({attribution.PROJECT_HEADER: "%FF", attribution.SESSION_HEADER: "cg-admin-x"}) == (
        None,
        None,
        None,
    )
