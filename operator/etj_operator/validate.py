"""``etj validate``: manifests checked offline the way the API server checks them on ``kubectl apply``.

Nothing here re-implements a rule. Each document goes through the same code that decides in the API emulator
(:mod:`etj_operator.sandbox.emulator`), loaded with the CRDs this package ships (or ``--crds``):

1. **decoding**, as kubectl and ``fieldValidation=Strict`` do: the YAML (a key twice in one mapping is an
   error; timestamps stay strings, as in the JSON kubectl sends), ``apiVersion`` and ``kind`` (a served version
   of a served kind), and every field the CRD's structural schema does not declare, found by the emulator's
   pruning walk (so ``x-kubernetes-preserve-unknown-fields`` subtrees, such as the pod template's spec, are free);
2. **admission**: a dry-run create through the emulator: the object name, the OpenAPI schema (types, bounds,
   enums, patterns, required fields), list types, then the CEL ``x-kubernetes-validations`` rules, with the
   server's field paths and words; every cause at once. When a check before the schema refuses the object (its
   name), the schema and CEL causes are added as a real server, which validates all of them together, reports;
3. **operator**: once admitted, the operator's own parser (:func:`etj_operator.models.parse_spec`) reads the
   admitted (defaulted) spec, as the operator will: a job the server admits but the operator would fail.

A document is valid when no stage found a problem; ``admitted`` tells the server's verdict alone. Documents of
other API groups are skipped. :data:`EXIT_VALID`, :data:`EXIT_INVALID` and :data:`EXIT_USAGE` are the exit
codes of ``etj validate`` (docs/gitops.md).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal

import yaml

from etj_operator import contract
from etj_operator.models import InvalidSpecError, parse_spec
from etj_operator.packagedata import data_path

if TYPE_CHECKING:
    from etj_operator.sandbox.emulator import ApiError, KubeApiEmulator, ResourceType
    from etj_operator.sandbox.emulator.admission import CustomResourceAdmission

__all__ = [
    "EXIT_INVALID",
    "EXIT_USAGE",
    "EXIT_VALID",
    "MANIFEST_SUFFIXES",
    "VALIDATE_LIBRARIES",
    "DocumentResult",
    "Problem",
    "Report",
    "ValidateError",
    "Validator",
    "load_crds",
    "read_documents",
    "validate_sources",
]

Json = dict[str, Any]
Stage = Literal["decoding", "admission", "operator"]
Verdict = Literal["valid", "invalid", "skipped"]

#: Every document of an EfficientTrainingJob API kind is valid.
EXIT_VALID: Final = 0
#: A document is invalid (or unparsable), or the input holds no document of the API group at all.
EXIT_INVALID: Final = 1
#: Usage or I/O error: a file that cannot be read, CRDs that cannot be loaded, a missing library.
EXIT_USAGE: Final = 2
#: The files a folder argument contributes (searched recursively).
MANIFEST_SUFFIXES: Final = (".yaml", ".yml", ".json")
#: The modules ``etj validate`` needs beyond the operator's: the emulator's (the ``validate`` extra).
VALIDATE_LIBRARIES: Final = ("kmock", "jsonschema", "jsonpatch", "cel_expr_python", "google.protobuf")
STDIN: Final = "-"

_TIMESTAMP_TAG: Final = "tag:yaml.org,2002:timestamp"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_FIELD_PATH: Final = re.compile(r"[A-Za-z0-9_.\-\[\]<>]+")


class ValidateError(Exception):
    """A usage or I/O problem (exit :data:`EXIT_USAGE`): the message says what and where."""


@dataclass(frozen=True)
class Problem:
    """One reason a document is refused: the stage that found it, the field path, the server's words."""

    stage: Stage
    field: str
    message: str
    reason: str = "FieldValueInvalid"

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        tag = "" if self.stage == "admission" else f"[{self.stage}] "
        return f"{tag}{where}{self.message}"


@dataclass
class DocumentResult:
    """The verdict on one document of one source (``index``: its position in the source, from 0)."""

    source: str
    index: int
    line: int
    api_version: str | None = None
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    verdict: Verdict = "valid"
    #: The API server's own verdict (decoding and admission); None for skipped documents.
    admitted: bool | None = None
    problems: list[Problem] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> Json:
        """The document's entry of ``-o json``."""
        data = asdict(self)
        head = {key: data.pop(key) for key in ("source", "index", "line")}
        return {**head, "apiVersion": data.pop("api_version"), **data}

    def title(self) -> str:
        """``source:line: Kind namespace/name`` for the text output."""
        source = "<stdin>" if self.source == STDIN else self.source
        what = self.kind or "document"
        if self.name:
            what += f" {self.namespace}/{self.name}" if self.namespace else f" {self.name}"
        return f"{source}:{self.line}: {what}"


@dataclass
class Report:
    """Every document's verdict, and the sources that could not be read."""

    documents: list[DocumentResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def count(self, verdict: Verdict) -> int:
        """How many documents got ``verdict``."""
        return sum(1 for d in self.documents if d.verdict == verdict)

    @property
    def checked(self) -> int:
        """Documents of the API group that were validated (valid or invalid)."""
        return self.count("valid") + self.count("invalid")

    def exit_code(self) -> int:
        """:data:`EXIT_USAGE` on an error, else :data:`EXIT_INVALID` when a document is invalid or none was checked."""
        if self.errors:
            return EXIT_USAGE
        return EXIT_INVALID if self.count("invalid") or not self.checked else EXIT_VALID

    def to_json(self) -> Json:
        """The ``-o json`` output."""
        return {
            "valid": self.exit_code() == EXIT_VALID,
            "summary": {v: self.count(v) for v in ("valid", "invalid", "skipped")},
            "documents": [d.to_json() for d in self.documents],
            "errors": list(self.errors),
        }

    def write_text(self, out: IO[str], err: IO[str]) -> None:
        """One line per document, its problems indented below it; read errors and a summary on ``err``."""
        for doc in self.documents:
            note = f" ({doc.note})" if doc.note else ""
            print(f"{doc.title()}: {doc.verdict}{note}", file=out)
            for problem in doc.problems:
                print(f"  {problem}", file=out)
        for error in self.errors:
            print(f"etj validate: {error}", file=err)
        if not self.checked and not self.errors:
            print(f"etj validate: no document of {contract.GROUP} found", file=err)
        print(f"{self.count('valid')} valid, {self.count('invalid')} invalid, {self.count('skipped')} skipped"
              f" (documents of other API groups)", file=err)


# ----- reading: YAML as kubectl reads it --------------------------------------------------------------------

class _ManifestLoader(yaml.SafeLoader):
    """PyYAML's safe loader with kubectl's differences: no timestamps, and keys given twice are recorded."""

    duplicates: list[str]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<` merges may override, as in go-yaml
            try:
                key = self.construct_object(key_node, deep=True)
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: the constructor below reports it
            if first != key_node.start_mark.line + 1:
                self.duplicates.append(f'line {key_node.start_mark.line + 1}: key "{key}" already set in map'
                                       f" (line {first})")
        return super().construct_mapping(node, deep=deep)


_ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_documents(text: str) -> Iterator[tuple[int, Any, list[str]]]:
    """Each YAML document of ``text``: (its first line, its value, its keys given twice); empty ones left out.

    Raises ``yaml.YAMLError`` where the text stops being YAML (the documents before are yielded).
    """
    loader = _ManifestLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            loader.duplicates = []
            value = loader.construct_document(node)
            if value is not None:
                yield node.start_mark.line + 1, value, list(loader.duplicates)
    finally:
        loader.dispose()


def _as_sent(value: Any) -> Any:
    """The value as kubectl sends it: JSON (keys become strings; values JSON lacks become strings)."""
    return json.loads(json.dumps(value, default=str))


def _expand(sources: Sequence[str]) -> Iterator[str]:
    for source in sources:
        path = Path(source)
        if source != STDIN and path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
            yield from (str(p) for p in found)
        else:
            yield source


def _read(source: str, stdin: IO[str]) -> str:
    if source == STDIN:
        return stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValidateError(f"{source}: cannot read: {e}") from e


# ----- the CRDs --------------------------------------------------------------------------------------------

def load_crds(path: str | Path | None = None) -> list[Json]:
    """The CustomResourceDefinitions of a YAML file or a folder of them (default: the packaged CRDs)."""
    where = Path(path) if path is not None else data_path("crds")
    files = sorted(where.glob("*.yaml")) if where.is_dir() else [where]
    crds: list[Json] = []
    for file in files:
        try:
            docs = [doc for _, doc, _ in read_documents(file.read_text(encoding="utf-8"))]
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ValidateError(f"cannot read the CRDs in {file}: {e}") from e
        crds += [_as_sent(d) for d in docs if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]
    if not crds:
        raise ValidateError(f"no CustomResourceDefinition in {where}")
    return crds


# ----- the checks ------------------------------------------------------------------------------------------

def _problems_of(error: ApiError, stage: Stage) -> list[Problem]:
    """An emulator ApiError as problems: one per Status cause, else one from its message."""
    causes = (error.details or {}).get("causes") or []
    if causes:
        return [Problem(stage, str(c.get("field") or ""), str(c.get("message") or ""),
                        str(c.get("reason") or "FieldValueInvalid")) for c in causes]
    message = error.message
    if error.code == 422 and " is invalid: " in message:
        message = message.split(" is invalid: ", 1)[1]
    where, sep, rest = message.partition(": ")
    if sep and _FIELD_PATH.fullmatch(where):
        return [Problem(stage, where, rest, error.reason)]
    return [Problem(stage, "", message, error.reason)]


class Validator:
    """Checks manifests against CRDs with the emulator's decoding, admission and the operator's parser."""

    def __init__(self, crds: Iterable[Mapping[str, Any]]) -> None:
        from etj_operator.sandbox.emulator import ApiError, KubeApiEmulator
        from etj_operator.sandbox.emulator.admission import CustomResourceAdmission

        self._api_error = ApiError
        self._emulator: KubeApiEmulator = KubeApiEmulator()
        crd_type = self._emulator.resource_type("customresourcedefinitions")
        for crd in crds:
            name = (crd.get("metadata") or {}).get("name", "?")
            try:  # a real server's CRD checks first: structural schema, defaults, CEL rules that compile
                self._emulator.create_object(crd_type, None, copy.deepcopy(dict(crd)))
            except ApiError as e:
                raise ValidateError(f"the CRD {name} is refused: {e.message}") from e
        self._types = {(rt.api_version, rt.kind): rt for rt in self._emulator.resource_types if rt.custom}
        if not self._types:
            raise ValidateError("the CRDs serve no version")
        self._groups = {rt.group for rt in self._types.values()}
        self._admission: CustomResourceAdmission = next(
            h for h in self._emulator.admission if isinstance(h, CustomResourceAdmission))

    @classmethod
    def from_path(cls, path: str | Path | None = None) -> Validator:
        """A validator for the CRDs of ``path`` (a file or folder; default: the packaged CRDs)."""
        return cls(load_crds(path))

    def check(self, doc: Any, result: DocumentResult) -> None:
        """Fill ``result`` (its verdict, the server's verdict and the problems) for one decoded document."""
        if not isinstance(doc, dict):
            result.verdict, result.admitted = "invalid", False
            result.problems.append(Problem("decoding", "", f"a manifest is a mapping (an object), not a"
                                                           f" {type(doc).__name__}", "BadRequest"))
            return
        api_version, kind = doc.get("apiVersion"), doc.get("kind")
        meta: Json = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
        result.api_version = api_version if isinstance(api_version, str) else None
        result.kind = kind if isinstance(kind, str) else None
        result.name = meta.get("name") if isinstance(meta.get("name"), str) else None
        rt = self._resource_type(doc, result)
        if rt is None:
            return
        result.namespace = (str(meta.get("namespace") or "default")) if rt.namespaced else None
        problems = self._decoding(doc, rt)
        admitted, causes = self._admit(doc, rt, result.namespace)
        problems += causes
        result.admitted = not problems
        if admitted is not None and result.admitted and rt.kind == contract.KIND:
            problems += self._operator(admitted)
        result.problems.extend(problems)
        result.verdict = "invalid" if problems else "valid"

    def _resource_type(self, doc: Json, result: DocumentResult) -> ResourceType | None:
        """The served type of the document; None (and the verdict set) when it is skipped or refused."""
        api_version, kind = result.api_version, result.kind
        missing = [Problem("decoding", key, "Required value: a manifest needs apiVersion and kind", "BadRequest")
                   for key in ("apiVersion", "kind") if not isinstance(doc.get(key), str) or not doc.get(key)]
        if missing:
            result.verdict, result.admitted = "invalid", False
            result.problems.extend(missing)
            return None
        assert api_version is not None and kind is not None
        rt = self._types.get((api_version, kind))
        if rt is not None:
            return rt
        group = api_version.rpartition("/")[0]
        ours = sorted({av for av, k in self._types if k == kind})
        if group not in self._groups and not ours:
            result.verdict = "skipped"
            result.note = f"not a kind of {', '.join(sorted(self._groups))}"
            return None
        result.verdict, result.admitted = "invalid", False
        served = (f"{kind} is served as {', '.join(ours)}" if ours
                  else f"{group} serves {', '.join(sorted({k for _, k in self._types}))}")
        result.problems.append(Problem("decoding", "apiVersion" if ours else "kind",
                                       f'no matches for kind "{kind}" in version "{api_version}" ({served})',
                                       "NoKindMatch"))
        return None

    def _decoding(self, doc: Json, rt: ResourceType) -> list[Problem]:
        """Fields a strict decoder refuses: those the emulator's pruning drops (``status`` is never stored)."""
        from etj_operator.sandbox.emulator.structural import _prune

        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata", "status")}
        dropped: list[str] = []
        _prune(copy.deepcopy(body), rt.schema, "", dropped)
        return [Problem("decoding", path, f'unknown field "{path}"', "FieldValueUnknown") for path in dropped]

    def _admit(self, doc: Json, rt: ResourceType, namespace: str | None) -> tuple[Json | None, list[Problem]]:
        """A dry-run create through the emulator: the admitted object, or every cause of its refusal."""
        from etj_operator.sandbox.emulator.structural import prune_and_default

        try:
            admitted = self._emulator.create_object(rt, namespace, copy.deepcopy(doc), dry_run=True)
        except self._api_error as error:
            problems = _problems_of(error, "admission")
            if not (error.details or {}).get("causes") and isinstance(doc.get("metadata") or {}, dict):
                # refused before the schema (the name): a real server reports the schema and CEL causes with it
                body = {k: v for k, v in copy.deepcopy(doc).items() if k != "status"}
                body["metadata"] = body.get("metadata") or {}
                obj = prune_and_default(body, rt.schema)
                for cause in self._admission.causes(rt, obj, None):
                    problem = Problem("admission", cause.field, cause.message, cause.reason)
                    if problem not in problems:
                        problems.append(problem)
            return None, problems
        return admitted, []

    def _operator(self, admitted: Json) -> list[Problem]:
        """What the operator's own parser says of the admitted spec (the job would be Failed, Invalid)."""
        name = (admitted.get("metadata") or {}).get("name")
        try:
            parse_spec(admitted.get("spec"), name if isinstance(name, str) else None)
        except InvalidSpecError as e:
            return [Problem("operator", p.path, f"{p.message} (fix: {p.fix})", "OperatorInvalid")
                    for p in e.problems]
        return []


def validate_sources(validator: Validator, sources: Sequence[str], stdin: IO[str] | None = None) -> Report:
    """Validate every document of every source (a file, a folder of manifests, or ``-`` for standard input)."""
    report = Report()
    stdin = stdin if stdin is not None else sys.stdin
    for source in _expand(sources):
        try:
            text = _read(source, stdin)
        except ValidateError as e:
            report.errors.append(str(e))
            continue
        index = 0
        try:
            for line, value, duplicates in read_documents(text):
                items = _list_items(value)
                for position, item in enumerate(items if items is not None else [value]):
                    result = DocumentResult(source, index, line, note=f"item {position} of a List" if items else "")
                    validator.check(_as_sent(item), result)
                    if duplicates and position == 0:  # kubectl refuses the whole document
                        result.problems[:0] = [Problem("decoding", "", d, "FieldValueDuplicate") for d in duplicates]
                        result.verdict, result.admitted = "invalid", False
                    report.documents.append(result)
                index += 1
        except yaml.YAMLError as e:
            report.documents.append(_not_yaml(source, index, e))
    return report


def _not_yaml(source: str, index: int, error: yaml.YAMLError) -> DocumentResult:
    """The invalid document where the text stops being YAML."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        what = ", ".join(x for x in (error.context, error.problem) if x)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        message = f"not YAML: {what}{where}"
    else:
        message = f"not YAML: {' '.join(str(error).split())}"
    result = DocumentResult(source, index, line, verdict="invalid", admitted=False)
    result.problems.append(Problem("decoding", "", message, "BadRequest"))
    return result


def _list_items(value: Any) -> list[Any] | None:
    """A ``v1 List``'s items (kubectl applies each), else None."""
    if isinstance(value, dict) and value.get("kind") == "List" and value.get("apiVersion") == "v1":
        items = value.get("items")
        return list(items) if isinstance(items, list) else []
    return None
