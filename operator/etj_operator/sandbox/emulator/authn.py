"""Authentication: bearer tokens to user info, as a kube-apiserver's token authenticators do.

Three kinds of caller, as on a real cluster:

* the **admin** token (:data:`ADMIN_TOKEN`, the one the default kubeconfig carries): user ``etj-emulator-admin``
  in the group ``system:masters``, which the bootstrap ``cluster-admin`` binding allows everything (and which
  skips escalation checks, as on a real server);
* **ServiceAccount** tokens, issued by the server (the TokenRequest subresource
  ``POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`` or :meth:`EmulatorServer.service_account_token`):
  user ``system:serviceaccount:NS:NAME`` in the groups ``system:serviceaccounts``,
  ``system:serviceaccounts:NS`` and ``system:authenticated``;
* **anonymous** requests (no ``Authorization`` header): ``system:anonymous`` in ``system:unauthenticated``, as
  with the kube-apiserver default ``--anonymous-auth=true``; RBAC then allows them only the public-info paths
  (``/healthz``, ``/livez``, ``/readyz``, ``/version``). With ``anonymous=False`` they get 401. With
  ``anonymous_user=ADMIN`` they act as the administrator, as the legacy insecure port (``--insecure-port``,
  plain HTTP on localhost, removed in 1.20) served them: kubectl (client-go) sends bearer tokens over TLS
  only, never over the emulator's plain HTTP, so the sandbox uses this for kubectl.

A token the server did not issue gets 401 with the body a real server sends. Tokens are opaque random strings
rather than signed JWTs (no client here reads their claims); they do not expire and are not revoked when their
ServiceAccount is deleted (a real server's bound tokens are).
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Mapping
from typing import Final

from .errors import ApiError

#: The token of the default kubeconfig: the emulator's administrator (group ``system:masters``).
ADMIN_TOKEN: Final = "etj-emulator-token"
ADMIN_USER: Final = "etj-emulator-admin"

GROUP_MASTERS: Final = "system:masters"
GROUP_AUTHENTICATED: Final = "system:authenticated"
GROUP_UNAUTHENTICATED: Final = "system:unauthenticated"
GROUP_SERVICE_ACCOUNTS: Final = "system:serviceaccounts"
SERVICE_ACCOUNT_PREFIX: Final = "system:serviceaccount:"


@dataclasses.dataclass(frozen=True)
class UserInfo:
    """Who a request comes from: what RBAC subjects match against."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""

    @property
    def privileged(self) -> bool:
        """Members of ``system:masters`` pass every authorization and escalation check."""
        return GROUP_MASTERS in self.groups

    def service_account(self) -> tuple[str, str] | None:
        """``(namespace, name)`` when this is a ServiceAccount's user."""
        if not self.name.startswith(SERVICE_ACCOUNT_PREFIX):
            return None
        namespace, _, name = self.name.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        return (namespace, name) if namespace and name else None


ADMIN: Final = UserInfo(ADMIN_USER, (GROUP_MASTERS, GROUP_AUTHENTICATED))
ANONYMOUS: Final = UserInfo("system:anonymous", (GROUP_UNAUTHENTICATED,))


def service_account_user(namespace: str, name: str, uid: str = "") -> UserInfo:
    """The user a ServiceAccount's token authenticates as."""
    return UserInfo(f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}",
                    (GROUP_SERVICE_ACCOUNTS, f"{GROUP_SERVICE_ACCOUNTS}:{namespace}", GROUP_AUTHENTICATED), uid)


def unauthorized() -> ApiError:
    """The 401 a real server answers to a token it does not know (``Unauthorized``, no details)."""
    return ApiError(401, "Unauthorized", "Unauthorized")


class TokenAuthenticator:
    """Bearer tokens to users (thread-safe: tokens are issued from test threads and read on the server loop)."""

    def __init__(self, *, anonymous: bool = True, anonymous_user: UserInfo | None = None,
                 tokens: Mapping[str, UserInfo] | None = None) -> None:
        self.anonymous = anonymous
        self.anonymous_user = anonymous_user or ANONYMOUS
        self._lock = threading.Lock()
        self._tokens: dict[str, UserInfo] = {ADMIN_TOKEN: ADMIN, **(tokens or {})}

    def add_token(self, token: str, user: UserInfo) -> None:
        """Accept ``token`` as ``user`` (a static token, as ``--token-auth-file`` gives)."""
        with self._lock:
            self._tokens[token] = user

    def issue_service_account_token(self, namespace: str, name: str, uid: str = "") -> str:
        """A new token for a ServiceAccount (what the TokenRequest API hands out)."""
        token = f"etj-sa.{secrets.token_urlsafe(24)}"
        self.add_token(token, service_account_user(namespace, name, uid))
        return token

    def authenticate(self, authorization: str | None) -> UserInfo:
        """The user of an ``Authorization`` header value; :class:`ApiError` 401 when it is not accepted."""
        if not authorization:
            if self.anonymous:
                return self.anonymous_user
            raise unauthorized()
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized()  # basic auth and client certificates are not emulated
        with self._lock:
            user = self._tokens.get(token.strip())
        if user is None:
            raise unauthorized()
        return user
