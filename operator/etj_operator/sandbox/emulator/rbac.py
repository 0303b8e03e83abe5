"""Authorization: the RBAC authorizer, escalation prevention and OwnerReferencesPermissionEnforcement.

What a kube-apiserver with ``--authorization-mode=RBAC`` does, over the Roles, ClusterRoles, RoleBindings and
ClusterRoleBindings stored in the emulator:

* **Request attributes** are resolved as ``RequestInfoFactory`` does: verbs get/list/watch/create/update/patch/
  delete/deletecollection (a collection GET is ``list``, or ``watch`` with ``watch=true`` or a ``/watch/``
  path; a list or watch whose ``fieldSelector`` pins ``metadata.name`` carries that name, so ``resourceNames``
  can allow it), subresources (``pods/log``, ``<plural>/status``), the namespace (for ``namespaces/NAME`` the
  name itself), and non-resource URLs (``/api``, ``/version``...) with the lower-cased HTTP method as verb.
* **Rules** match as ``RuleAllows``: ``*`` in verbs, apiGroups and resources; ``*/status`` for a subresource of
  any resource; ``resourceNames``; ``nonResourceURLs`` exact or with a trailing ``*`` (ClusterRoleBindings
  only). ClusterRoleBindings apply everywhere; RoleBindings (to a Role or a ClusterRole) in their namespace.
  A binding to a missing role adds ``RBAC: role.rbac.authorization.k8s.io "x" not found`` to the denial.
  Members of ``system:masters`` are allowed everything, as the privileged-group authorizer does.
* **Escalation prevention** on writes of Roles/ClusterRoles (``escalate`` on the role, or hold every rule it
  grants) and of bindings (``bind`` on the referenced role, or hold every rule of it; a binding to a role that
  does not exist is refused with the role's 404, as ``policybased`` storage does). Writes that only change
  ownerReferences or finalizers are not checked.
* **OwnerReferencesPermissionEnforcement** (when switched on): setting or changing ownerReferences needs
  ``delete`` on the object; a new ``blockOwnerDeletion: true`` needs ``update`` on the owner's
  ``<plural>/finalizers``.
* Answers shaped like a real server's (``pods is forbidden: User "..." cannot list resource "pods" in API
  group "" in the namespace "ns"``), the bootstrap policy (``cluster-admin`` for ``system:masters``;
  ``system:discovery``, ``system:basic-user`` and ``system:public-info-viewer`` for the authenticated, the last
  also for the unauthenticated), the TokenRequest subresource and Self{Subject,Rules}Reviews for
  ``kubectl auth can-i``.

Not emulated: aggregated ClusterRoles (``aggregationRule``), impersonation, the Node authorizer, webhooks.
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import datetime
import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import aiohttp.web

from . import protobuf
from .authn import (
    ANONYMOUS,
    GROUP_AUTHENTICATED,
    GROUP_MASTERS,
    GROUP_UNAUTHENTICATED,
    TokenAuthenticator,
    UserInfo,
    service_account_user,
)
from .errors import ApiError, _bad_request
from .objects import _meta, _now
from .selection import parse_field_selector

if TYPE_CHECKING:
    from .core import KubeApiEmulator
    from .frontend import _ApiPath
    from .resources import ResourceType

Json = dict[str, Any]

RBAC_GROUP: Final = "rbac.authorization.k8s.io"
AUTHORIZATION_GROUP: Final = "authorization.k8s.io"
TOKEN_EXPIRATION_SECONDS: Final = 3607  # what the kubelet asks for a projected token by default

#: The user of the HTTP request being served (None for the in-process accessors, which act as the control
#: plane and are not authorized).
current_user: contextvars.ContextVar[UserInfo | None] = contextvars.ContextVar("etj_emulator_user", default=None)

_METHOD_VERBS: Final = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
                        "DELETE": "delete"}


@dataclasses.dataclass(frozen=True)
class Attributes:
    """What is authorized: ``authorizer.AttributesRecord``."""

    user: UserInfo
    verb: str
    resource_request: bool = True
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @property
    def combined_resource(self) -> str:
        """``resource`` or ``resource/subresource``."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


class Decision(NamedTuple):
    """An authorization answer with the reason the RBAC authorizer gives."""

    allowed: bool
    reason: str


def request_attributes(user: UserInfo, method: str, path: str, query: Mapping[str, str]) -> Attributes:
    """Resolve an HTTP request into authorization attributes, as ``RequestInfoFactory`` does."""
    from .frontend import _parse_api_path  # the frontend does not import this module at run time

    api = _parse_api_path(path)
    if api is None or api.plural is None:
        return Attributes(user, method.lower(), resource_request=False, path=path)
    verb = _METHOD_VERBS.get(method.upper(), method.lower())
    name = api.name or ""
    if api.legacy_watch and verb == "get":
        verb = "watch"
    elif verb == "get" and query.get("watch") in ("true", "1"):
        verb = "watch"  # a named watch too (the emulator serves /NAME?watch=true as a watch)
    elif verb == "get" and not name:
        verb = "list"
    if verb in ("list", "watch") and not name and query.get("fieldSelector"):
        try:
            terms = parse_field_selector(query["fieldSelector"])
        except ApiError:
            terms = []
        name = next((value for field, equal, value in terms if field == "metadata.name" and equal), "")
    if verb == "delete" and not name:
        verb = "deletecollection"
    namespace = api.namespace or ""
    if api.group == "" and api.plural == "namespaces" and name:
        namespace = name
    return Attributes(user, verb, group=api.group, version=api.version, resource=api.plural,
                      subresource=api.subresource or "", namespace=namespace, name=name, path=path)


# ----- rules ------------------------------------------------------------------------------------------------


def _listed(rule: Mapping[str, Any], key: str) -> list[str]:
    value = rule.get(key) or []
    return [str(v) for v in value] if isinstance(value, list) else []


def rule_allows(attrs: Attributes, rule: Mapping[str, Any]) -> bool:
    """Whether one PolicyRule allows the request (``RuleAllows``)."""
    verbs = _listed(rule, "verbs")
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    if not attrs.resource_request:
        for url in _listed(rule, "nonResourceURLs"):
            if url == "*" or url == attrs.path or (url.endswith("*") and attrs.path.startswith(url[:-1])):
                return True
        return False
    groups = _listed(rule, "apiGroups")
    if "*" not in groups and attrs.group not in groups:
        return False
    resources = _listed(rule, "resources")
    combined = attrs.combined_resource
    if not ("*" in resources or combined in resources
            or (attrs.subresource and f"*/{attrs.subresource}" in resources)):
        return False
    names = _listed(rule, "resourceNames")
    return not names or attrs.name in names


def _breakdown(rule: Mapping[str, Any]) -> Iterator[Json]:
    """One rule per (group, resource, name, verb) or (URL, verb), as ``BreakdownRule`` does."""
    verbs = _listed(rule, "verbs")
    for group in _listed(rule, "apiGroups"):
        for resource in _listed(rule, "resources"):
            for verb in verbs:
                names: list[str | None] = list(_listed(rule, "resourceNames")) or [None]
                for name in names:
                    piece: Json = {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
                    if name is not None:
                        piece["resourceNames"] = [name]
                    yield piece
    for url in _listed(rule, "nonResourceURLs"):
        for verb in verbs:
            yield {"nonResourceURLs": [url], "verbs": [verb]}


def _resource_covers(owned: list[str], wanted: list[str]) -> bool:
    if "*" in owned:
        return True
    for resource in wanted:
        if resource in owned:
            continue
        if "/" not in resource or f"*/{resource.split('/', 1)[1]}" not in owned:
            return False
    return True


def _url_covers(owned: list[str], wanted: list[str]) -> bool:
    return all(any(o == url or (o.endswith("*") and url.startswith(o[:-1])) for o in owned) for url in wanted)


def rule_covers(owner: Mapping[str, Any], sub: Mapping[str, Any]) -> bool:
    """Whether ``owner`` grants everything ``sub`` does (``ruleCovers`` of the policy comparator)."""
    def has_all(key: str) -> bool:
        owned = _listed(owner, key)
        return "*" in owned or set(_listed(sub, key)) <= set(owned)

    owner_names, sub_names = _listed(owner, "resourceNames"), _listed(sub, "resourceNames")
    names = not owner_names or (bool(sub_names) and set(sub_names) <= set(owner_names))
    return (has_all("verbs") and has_all("apiGroups")
            and _resource_covers(_listed(owner, "resources"), _listed(sub, "resources"))
            and _url_covers(_listed(owner, "nonResourceURLs"), _listed(sub, "nonResourceURLs")) and names)


def covers(owner_rules: Iterable[Mapping[str, Any]], rules: Iterable[Mapping[str, Any]]) -> tuple[bool, list[Json]]:
    """Whether ``owner_rules`` hold every permission of ``rules``; also the pieces that are missing."""
    owned = list(owner_rules)
    missing = [piece for rule in rules for piece in _breakdown(rule)
               if not any(rule_covers(o, piece) for o in owned)]
    return not missing, missing


def _go_quoted_list(values: list[str]) -> str:
    return "[" + " ".join(json.dumps(v) for v in values) + "]"


def compact_string(rule: Mapping[str, Any]) -> str:
    """A rule as ``rbacv1helpers.CompactString`` prints it: ``{APIGroups:[""], Resources:["pods"], Verbs:["get"]}``."""
    parts = [f"{label}:{_go_quoted_list(_listed(rule, key))}"
             for label, key in (("APIGroups", "apiGroups"), ("Resources", "resources"),
                                ("NonResourceURLs", "nonResourceURLs"), ("ResourceNames", "resourceNames"),
                                ("Verbs", "verbs")) if _listed(rule, key)]
    return "{" + ", ".join(parts) + "}"


def _compact(rules: list[Json]) -> list[Json]:
    """Merge the verbs of pieces that differ only in their verb (``CompactRules``)."""
    merged: dict[str, Json] = {}
    for rule in rules:
        key = json.dumps({k: v for k, v in rule.items() if k != "verbs"}, sort_keys=True)
        if key in merged:
            merged[key]["verbs"] += [v for v in rule["verbs"] if v not in merged[key]["verbs"]]
        else:
            merged[key] = copy.deepcopy(rule)
    return list(merged.values())


def _go_groups(user: UserInfo) -> str:
    return _go_quoted_list(list(user.groups))


# ----- answers ----------------------------------------------------------------------------------------------


def _forbidden_message(attrs: Attributes) -> str:
    user = attrs.user.name
    if not attrs.resource_request:
        return f"User {json.dumps(user)} cannot {attrs.verb} path {json.dumps(attrs.path)}"
    what = (f"User {json.dumps(user)} cannot {attrs.verb} resource {json.dumps(attrs.combined_resource)}"
            f" in API group {json.dumps(attrs.group)}")
    if attrs.namespace:
        return f"{what} in the namespace {json.dumps(attrs.namespace)}"
    return f"{what} at the cluster scope"


def forbidden_error(group: str, resource: str, name: str, message: str) -> ApiError:
    """``apierrors.NewForbidden``: ``<resource>[.<group>] ["name"] is forbidden: <message>``."""
    if not resource:
        return ApiError(403, "Forbidden", f"forbidden: {message}")
    qualified = f"{resource}.{group}" if group else resource
    subject = f"{qualified} {json.dumps(name)}" if name else qualified
    details: Json = {"kind": resource}
    if group:
        details["group"] = group
    if name:
        details["name"] = name
    return ApiError(403, "Forbidden", f"{subject} is forbidden: {message}", details=details)


def forbidden(attrs: Attributes, reason: str = "") -> ApiError:
    """The 403 of the authorization filter (``responsewriters.Forbidden``)."""
    message = _forbidden_message(attrs)
    if reason:
        message = f"{message}: {reason}"
    if not attrs.resource_request:
        return forbidden_error("", "", "", message)
    return forbidden_error(attrs.group, attrs.resource, attrs.name, message)


def _role_not_found(kind: str, name: str) -> ApiError:
    # What the RBAC listers answer (singular resource names): role.rbac.authorization.k8s.io "x" not found
    resource = "clusterrole" if kind == "ClusterRole" else "role"
    return ApiError(404, "NotFound", f'{resource}.{RBAC_GROUP} "{name}" not found',
                    details={"name": name, "group": RBAC_GROUP, "kind": resource})


# ----- the bootstrap policy ---------------------------------------------------------------------------------

_BOOTSTRAP_META: Final = {"labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                          "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}}
_PUBLIC_INFO_URLS: Final = ["/healthz", "/livez", "/readyz", "/version", "/version/"]


def bootstrap_policy() -> list[tuple[str, Json]]:
    """``(plural, object)`` of the default ClusterRoles and ClusterRoleBindings the emulator needs."""
    def role(name: str, rules: list[Json]) -> tuple[str, Json]:
        return "clusterroles", {"metadata": {"name": name, **copy.deepcopy(_BOOTSTRAP_META)}, "rules": rules}

    def binding(name: str, *groups: str) -> tuple[str, Json]:
        return "clusterrolebindings", {
            "metadata": {"name": name, **copy.deepcopy(_BOOTSTRAP_META)},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": g} for g in groups]}

    return [
        role("cluster-admin", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                               {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        binding("cluster-admin", GROUP_MASTERS),
        role("system:discovery", [{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                                                       "/openapi", "/openapi/*", "/readyz", "/version",
                                                       "/version/"], "verbs": ["get"]}]),
        binding("system:discovery", GROUP_AUTHENTICATED),
        role("system:basic-user", [
            {"apiGroups": [AUTHORIZATION_GROUP], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
             "verbs": ["create"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]),
        binding("system:basic-user", GROUP_AUTHENTICATED),
        role("system:public-info-viewer", [{"nonResourceURLs": _PUBLIC_INFO_URLS, "verbs": ["get"]}]),
        binding("system:public-info-viewer", GROUP_AUTHENTICATED, GROUP_UNAUTHENTICATED),
    ]


# ----- the authorizer ---------------------------------------------------------------------------------------


def _subject_matches(subject: Mapping[str, Any], user: UserInfo, binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return bool(name == user.name)
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and user.name == f"system:serviceaccount:{namespace}:{name}"
    return False


def _describe_subject(subject: Mapping[str, Any], binding_namespace: str) -> str:
    if subject.get("kind") == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return f'ServiceAccount "{namespace}/{subject.get("name")}"'
    return f'{subject.get("kind")} "{subject.get("name")}"'


class RbacAuthorizer:
    """The RBAC authorizer over the emulator's stored RBAC objects (call it on the server's loop)."""

    def __init__(self, emulator: KubeApiEmulator) -> None:
        self.emulator = emulator

    def _objects(self, plural: str) -> dict[tuple[str, str], Json]:
        rt = self.emulator._types.get((RBAC_GROUP, "v1", plural))
        return self.emulator._bucket(rt) if rt is not None else {}

    def role_rules(self, kind: str, name: str, namespace: str) -> list[Json]:
        """The rules of a roleRef; :class:`ApiError` 404 when the role does not exist."""
        if kind == "ClusterRole":
            role = self._objects("clusterroles").get(("", name))
        elif kind == "Role":
            role = self._objects("roles").get((namespace, name))
        else:
            role = None
        if role is None:
            raise _role_not_found(kind, name)
        return [r for r in role.get("rules") or [] if isinstance(r, dict)]

    def _visit(self, user: UserInfo, namespace: str) -> Iterator[tuple[str, list[Json], ApiError | None]]:
        """(description, rules, error) of every binding that names the user, cluster bindings first."""
        for (_, name), crb in sorted(self._objects("clusterrolebindings").items()):
            ref = crb.get("roleRef") or {}
            for subject in crb.get("subjects") or []:
                if _subject_matches(subject, user, ""):
                    source = (f'ClusterRoleBinding "{name}" of ClusterRole "{ref.get("name")}" to'
                              f' {_describe_subject(subject, "")}')
                    try:
                        yield source, self.role_rules("ClusterRole", str(ref.get("name")), ""), None
                    except ApiError as e:
                        yield source, [], e
                    break
        if not namespace:
            return
        for (ns, name), rb in sorted(self._objects("rolebindings").items()):
            if ns != namespace:
                continue
            ref = rb.get("roleRef") or {}
            for subject in rb.get("subjects") or []:
                if _subject_matches(subject, user, ns):
                    source = (f'RoleBinding "{name}/{ns}" of {ref.get("kind")} "{ref.get("name")}" to'
                              f' {_describe_subject(subject, ns)}')
                    try:
                        rules = self.role_rules(str(ref.get("kind")), str(ref.get("name")), ns)
                        # a RoleBinding never grants non-resource URLs
                        yield source, [r for r in rules if not r.get("nonResourceURLs")], None
                    except ApiError as e:
                        yield source, [], e
                    break

    def authorize(self, attrs: Attributes) -> Decision:
        """Allow, or deny with the RBAC authorizer's reason (resolution errors, else empty)."""
        if attrs.user.privileged:
            return Decision(True, "")
        errors: list[str] = []
        namespace = attrs.namespace if attrs.resource_request else ""
        for source, rules, error in self._visit(attrs.user, namespace):
            if error is not None:
                errors.append(error.message)
            if any(rule_allows(attrs, rule) for rule in rules):
                return Decision(True, f"RBAC: allowed by {source}")
        return Decision(False, f"RBAC: [{', '.join(errors)}]" if len(errors) > 1 else
                        (f"RBAC: {errors[0]}" if errors else ""))

    def rules_for(self, user: UserInfo, namespace: str) -> tuple[list[Json], list[str]]:
        """Every rule the user holds in a namespace ("" for cluster scope) and the resolution errors."""
        rules: list[Json] = []
        errors: list[str] = []
        for _, found, error in self._visit(user, namespace):
            rules += found
            if error is not None:
                errors.append(error.message)
        return rules, errors

    def confirm_no_escalation(self, user: UserInfo, namespace: str, rules: list[Json]) -> str | None:
        """None when the user holds every rule; else the message of ``ConfirmNoEscalation``."""
        owned, errors = self.rules_for(user, namespace)
        if user.privileged:
            return None
        ok, missing = covers(owned, rules)
        if ok:
            return None
        lines = sorted(compact_string(r) for r in _compact(missing))
        message = (f"user {json.dumps(user.name)} (groups={_go_groups(user)}) is attempting to grant RBAC"
                   f" permissions not currently held:\n" + "\n".join(lines))
        if errors:
            message += f"; resolution errors: [{', '.join(errors)}]"
        return message


# ----- the whole access control of one emulator ---------------------------------------------------------------


class CheckedPermission(NamedTuple):
    """One authorization decision, as tests look at it (``resource`` is ``plural`` or ``plural/sub``)."""

    user: str
    verb: str
    group: str
    resource: str
    namespace: str | None
    allowed: bool


def _only_gc_fields_change(new: Json, old: Json) -> bool:
    # IsOnlyMutatingGCFields: ownerReferences and finalizers are what the garbage collector writes.
    def stripped(obj: Json) -> Json:
        copied = copy.deepcopy(obj)
        meta = copied.get("metadata") or {}
        for field in ("ownerReferences", "finalizers", "resourceVersion", "generation", "managedFields"):
            meta.pop(field, None)
        return copied
    return stripped(new) == stripped(old)


def _owner_refs(obj: Json) -> list[Json]:
    return [r for r in _meta(obj).get("ownerReferences") or [] if isinstance(r, dict)]


class AccessControl:
    """Authentication, RBAC and the RBAC-related admission of one emulator (``HttpFrontend.access``)."""

    def __init__(self, emulator: KubeApiEmulator, *, enabled: bool = True, anonymous: bool = True,
                 anonymous_user: UserInfo | None = None,
                 owner_references_permission_enforcement: bool = False) -> None:
        self.emulator = emulator
        self.enabled = enabled
        self.owner_references_permission_enforcement = owner_references_permission_enforcement
        self.authenticator = TokenAuthenticator(anonymous=anonymous, anonymous_user=anonymous_user)
        self.authorizer = RbacAuthorizer(emulator)
        self._checked: set[CheckedPermission] = set()
        self._lock = threading.Lock()

    # ----- requests

    def check_request(self, raw: aiohttp.web.BaseRequest) -> None:
        """Authenticate and authorize one HTTP request (raises the 401/403); remember its user for admission."""
        if not self.enabled:
            return
        user = self.authenticator.authenticate(raw.headers.get("Authorization"))
        if raw.headers.get("Impersonate-User"):
            user = self._impersonate(user, raw.headers["Impersonate-User"], raw.headers.getall("Impersonate-Group", []))
        current_user.set(user)
        attrs = request_attributes(user, raw.method, raw.path, raw.query)
        decision = self.authorize(attrs)
        if not decision.allowed:
            raise forbidden(attrs, decision.reason)

    def _impersonate(self, user: UserInfo, name: str, groups: list[str]) -> UserInfo:
        # The impersonation filter: `impersonate` on users (or the ServiceAccount) and on each group.
        account = UserInfo(name).service_account()
        checks = [Attributes(user, "impersonate", resource="serviceaccounts", namespace=account[0], name=account[1])
                  if account else Attributes(user, "impersonate", resource="users", name=name)]
        checks += [Attributes(user, "impersonate", resource="groups", name=g) for g in groups]
        for attrs in checks:
            decision = self.authorize(attrs)
            if not decision.allowed:
                raise forbidden(attrs, decision.reason)
        if account and not groups:
            return service_account_user(*account)
        extra = () if name == ANONYMOUS.name else (GROUP_AUTHENTICATED,)
        return UserInfo(name, tuple(dict.fromkeys([*groups, *extra])))

    def authorize(self, attrs: Attributes) -> Decision:
        """Authorize (always allowed when RBAC is off) and remember the decision for :meth:`checked`."""
        decision = self.authorizer.authorize(attrs) if self.enabled else Decision(True, "RBAC is off")
        if attrs.resource_request:
            with self._lock:
                self._checked.add(CheckedPermission(attrs.user.name, attrs.verb, attrs.group,
                                                    attrs.combined_resource, attrs.namespace or None,
                                                    decision.allowed))
        return decision

    def checked(self, user: str | None = None) -> set[CheckedPermission]:
        """Every distinct resource authorization decided so far (requests and admission checks alike)."""
        with self._lock:
            return {c for c in self._checked if user is None or c.user == user}

    def clear_checked(self) -> None:
        """Forget the recorded decisions."""
        with self._lock:
            self._checked.clear()

    async def answer(self, raw: aiohttp.web.BaseRequest,
                     api: _ApiPath | None) -> aiohttp.web.StreamResponse | None:
        """Serve the endpoints that need the caller's identity: TokenRequest and the self reviews."""
        if api is None or raw.method != "POST":
            return None
        if api.group == "" and api.plural == "serviceaccounts" and api.subresource == "token" and api.name:
            return self._token_request(api.namespace or "", api.name, await _body(raw))
        if api.group == AUTHORIZATION_GROUP and api.name is None and api.plural == "selfsubjectaccessreviews":
            return self._self_subject_access_review(await _body(raw))
        if api.group == AUTHORIZATION_GROUP and api.name is None and api.plural == "selfsubjectrulesreviews":
            return self._self_subject_rules_review(await _body(raw))
        return None

    def _requester(self) -> UserInfo:
        from .authn import ADMIN

        user = current_user.get()
        return user if user is not None else ADMIN

    def _token_request(self, namespace: str, name: str, body: Json) -> aiohttp.web.StreamResponse:
        service_account = self.emulator.read_object(self.emulator.resource_type("v1/serviceaccounts"), namespace,
                                                    name)  # 404 for a missing ServiceAccount
        spec = dict(body.get("spec") or {})
        seconds = int(spec.get("expirationSeconds") or TOKEN_EXPIRATION_SECONDS)
        token = self.authenticator.issue_service_account_token(namespace, name, _meta(service_account).get("uid", ""))
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
        return aiohttp.web.json_response({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": _now()},
            "spec": {**spec, "audiences": spec.get("audiences") or ["https://kubernetes.default.svc"],
                     "expirationSeconds": seconds},
            "status": {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }, status=201)

    def _self_subject_access_review(self, body: Json) -> aiohttp.web.StreamResponse:
        spec = body.get("spec") or {}
        user = self._requester()
        resource = spec.get("resourceAttributes")
        non_resource = spec.get("nonResourceAttributes")
        if isinstance(resource, dict):
            attrs = Attributes(user, str(resource.get("verb") or ""), group=str(resource.get("group") or ""),
                               version=str(resource.get("version") or ""),
                               resource=str(resource.get("resource") or ""),
                               subresource=str(resource.get("subresource") or ""),
                               namespace=str(resource.get("namespace") or ""), name=str(resource.get("name") or ""))
        elif isinstance(non_resource, dict):
            attrs = Attributes(user, str(non_resource.get("verb") or ""), resource_request=False,
                               path=str(non_resource.get("path") or ""))
        else:
            raise ApiError(422, "Invalid", 'SelfSubjectAccessReview.authorization.k8s.io "" is invalid:'
                           " spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes"
                           " or resourceAttributes must be specified")
        decision = self.authorizer.authorize(attrs) if self.enabled else Decision(True, "")
        status: Json = {"allowed": decision.allowed}
        if decision.reason:
            status["reason"] = decision.reason
        return aiohttp.web.json_response({
            "kind": "SelfSubjectAccessReview", "apiVersion": f"{AUTHORIZATION_GROUP}/v1",
            "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}, status=201)

    def _self_subject_rules_review(self, body: Json) -> aiohttp.web.StreamResponse:
        spec = body.get("spec") or {}
        user = self._requester()
        rules, errors = self.authorizer.rules_for(user, str(spec.get("namespace") or ""))
        if user.privileged:  # cluster-admin's rules
            rules = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                     {"nonResourceURLs": ["*"], "verbs": ["*"]}]
        resource_rules = [{k: r[k] for k in ("verbs", "apiGroups", "resources", "resourceNames") if r.get(k)}
                          for r in rules if not r.get("nonResourceURLs")]
        non_resource_rules = [{"verbs": r.get("verbs") or [], "nonResourceURLs": r["nonResourceURLs"]}
                              for r in rules if r.get("nonResourceURLs")]
        status: Json = {"resourceRules": resource_rules, "nonResourceRules": non_resource_rules,
                        "incomplete": bool(errors)}
        if errors:
            status["evaluationError"] = ", ".join(errors)
        return aiohttp.web.json_response({
            "kind": "SelfSubjectRulesReview", "apiVersion": f"{AUTHORIZATION_GROUP}/v1",
            "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}, status=201)

    # ----- admission (registered in the emulator's admission hooks)

    def admit(self, rt: ResourceType, obj: Json, old: Json | None) -> None:
        """Escalation prevention on RBAC writes and, when on, OwnerReferencesPermissionEnforcement."""
        user = current_user.get()
        if not self.enabled or user is None or user.privileged:
            return  # the control plane (in-process accessors) and system:masters
        if self.owner_references_permission_enforcement:
            self._owner_references(user, rt, obj, old)
        if rt.group == RBAC_GROUP:
            self._no_escalation(user, rt, obj, old)

    def _no_escalation(self, user: UserInfo, rt: ResourceType, obj: Json, old: Json | None) -> None:
        if old is not None and _only_gc_fields_change(obj, old):
            return
        meta = _meta(obj)
        name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "")
        if rt.plural in ("roles", "clusterroles"):
            # (escalate and bind are asked first and refused to most writers: not recorded in checked())
            if self.authorizer.authorize(Attributes(user, "escalate", group=RBAC_GROUP, version="v1",
                                                    resource=rt.plural, namespace=namespace, name=name)).allowed:
                return
            rules = [r for r in obj.get("rules") or [] if isinstance(r, dict)]
            problem = self.authorizer.confirm_no_escalation(user, namespace, rules)
            if problem is not None:
                raise forbidden_error(RBAC_GROUP, rt.plural, name, problem)
        elif rt.plural in ("rolebindings", "clusterrolebindings"):
            ref = obj.get("roleRef") or {}
            kind, role = str(ref.get("kind") or ""), str(ref.get("name") or "")
            if kind not in ("Role", "ClusterRole"):
                raise _bad_request(f"roleRef.kind: Unsupported value: {kind!r}")
            role_plural = "clusterroles" if kind == "ClusterRole" else "roles"
            if self.authorizer.authorize(Attributes(user, "bind", group=RBAC_GROUP, version="v1",
                                                    resource=role_plural, namespace=namespace, name=role)).allowed:
                return
            rules = self.authorizer.role_rules(kind, role, namespace)  # a missing role: its 404, as a real server
            problem = self.authorizer.confirm_no_escalation(user, namespace, rules)
            if problem is not None:
                raise forbidden_error(RBAC_GROUP, rt.plural, name, problem)

    def _owner_references(self, user: UserInfo, rt: ResourceType, obj: Json, old: Json | None) -> None:
        refs = _owner_refs(obj)
        old_refs = _owner_refs(old) if old is not None else []
        if (old is None and not refs) or (old is not None and refs == old_refs):
            return
        meta = _meta(obj)
        name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "")
        decision = self.authorize(Attributes(user, "delete", group=rt.group, version=rt.version,
                                             resource=rt.plural, namespace=namespace, name=name))
        if not decision.allowed:
            raise forbidden_error(rt.group, rt.plural, name, "cannot set an ownerRef on a resource you can't"
                                  f" delete: {decision.reason}, <nil>")
        was_blocking = {r.get("uid") for r in old_refs if r.get("blockOwnerDeletion") is True}
        for ref in refs:
            if ref.get("blockOwnerDeletion") is not True or ref.get("uid") in was_blocking:
                continue
            api_version = str(ref.get("apiVersion") or "")
            group, _, version = api_version.rpartition("/")
            owners = [t for t in self.emulator.resource_types
                      if t.group == group and t.version == version and t.kind == ref.get("kind")]
            if not owners:
                raise forbidden_error(rt.group, rt.plural, name, "cannot set blockOwnerDeletion in this case because"
                                      f" cannot find RESTMapping for APIVersion {api_version} Kind {ref.get('kind')}:"
                                      f" {decision.reason}, no matches for kind")
            for owner in owners:
                check = self.authorize(Attributes(user, "update", group=group, version=version,
                                                  resource=owner.plural, subresource="finalizers",
                                                  namespace=namespace, name=str(ref.get("name") or "")))
                if not check.allowed:
                    raise forbidden_error(rt.group, rt.plural, name, "cannot set blockOwnerDeletion if an"
                                          " ownerReference refers to a resource you can't set finalizers on:"
                                          f" {check.reason}, <nil>")


async def _body(raw: aiohttp.web.BaseRequest) -> Json:
    data = await raw.read()  # read once by serve(); aiohttp keeps it
    if not data.strip():
        return {}
    if protobuf.is_protobuf(raw.content_type) or data.startswith(protobuf.MAGIC):
        return protobuf.decode_object(data)  # kubectl sends protobuf for built-in kinds
    try:
        body = json.loads(data)
    except ValueError as e:
        raise _bad_request(f"the request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise _bad_request("the request body must be a JSON object")
    return body
