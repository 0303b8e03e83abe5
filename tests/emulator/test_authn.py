"""Authentication: bearer tokens to users, anonymous requests, and the 401 a real server answers."""

from __future__ import annotations

import pytest

from etj_operator.sandbox.emulator import ApiError
from etj_operator.sandbox.emulator.authn import (
    ADMIN,
    ADMIN_TOKEN,
    ANONYMOUS,
    TokenAuthenticator,
    UserInfo,
    service_account_user,
    unauthorized,
)

UNAUTHORIZED_BODY = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": "Unauthorized", "reason": "Unauthorized", "code": 401}


def test_a_service_account_user_has_the_groups_a_real_server_gives():
    user = service_account_user("ml", "digits-etj")
    assert user.name == "system:serviceaccount:ml:digits-etj"
    assert user.groups == ("system:serviceaccounts", "system:serviceaccounts:ml", "system:authenticated")
    assert user.service_account() == ("ml", "digits-etj")
    assert not user.privileged


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"Bearer {ADMIN_TOKEN}", ADMIN),
        (f"bearer {ADMIN_TOKEN}", ADMIN),  # the scheme is case-insensitive
        (None, ANONYMOUS),
        ("", ANONYMOUS),
    ],
)
def test_known_tokens_and_anonymous_requests_authenticate(header, expected):
    assert TokenAuthenticator().authenticate(header) == expected


@pytest.mark.parametrize("header", ["Bearer not-issued", "Basic dXNlcjpwYXNz", "Bearer ", "Token abc"])
def test_anything_else_is_unauthorized_with_the_real_body(header):
    with pytest.raises(ApiError) as caught:
        TokenAuthenticator().authenticate(header)
    assert caught.value.code == 401
    assert caught.value.to_status() == UNAUTHORIZED_BODY


def test_without_anonymous_auth_a_missing_token_is_unauthorized():
    with pytest.raises(ApiError) as caught:
        TokenAuthenticator(anonymous=False).authenticate(None)
    assert caught.value.to_status() == unauthorized().to_status()


def test_anonymous_may_be_mapped_to_a_user_as_the_legacy_insecure_port_did():
    assert TokenAuthenticator(anonymous_user=ADMIN).authenticate(None) == ADMIN


def test_issued_service_account_tokens_are_distinct_and_authenticate_as_the_account():
    auth = TokenAuthenticator()
    first = auth.issue_service_account_token("ml", "a", uid="u1")
    second = auth.issue_service_account_token("ml", "a", uid="u1")
    assert first != second
    assert auth.authenticate(f"Bearer {first}") == UserInfo(
        "system:serviceaccount:ml:a", ("system:serviceaccounts", "system:serviceaccounts:ml", "system:authenticated"),
        "u1")
    assert auth.authenticate(f"Bearer {second}").name == "system:serviceaccount:ml:a"
