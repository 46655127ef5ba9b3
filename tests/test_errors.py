"""lion_distill.errors: the failure kinds every layer shares. Milliseconds."""

import pytest

from lion_distill.errors import TRANSIENT, ErrorKind, is_transient


def test_the_kinds_are_the_row_contracts_values():
    assert [k.value for k in ErrorKind] == [
        "context_overflow",
        "rate_limit",
        "timeout",
        "connection",
        "server_error",
        "engine_lost",
        "budget",
        "refused",
        "bad_request",
        "unparseable",
    ]
    assert ErrorKind("timeout") is ErrorKind.TIMEOUT and ErrorKind.TIMEOUT == "timeout"  # a column's string is a kind


def test_what_is_asked_again_on_resume():
    assert {k.value for k in TRANSIENT} == {
        "rate_limit",
        "timeout",
        "connection",
        "server_error",
        "engine_lost",
        "budget",
    }
    assert [k for k in ErrorKind if is_transient(k.value)] == sorted(TRANSIENT, key=list(ErrorKind).index)
    assert not is_transient(None)  # an answered row
    for permanent in ("context_overflow", "refused", "bad_request", "unparseable"):
        assert not is_transient(permanent)
    with pytest.raises(ValueError):
        is_transient("failed: timeout")  # a string that is not a kind is a bug, not a permanent failure
