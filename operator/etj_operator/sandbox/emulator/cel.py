"""CEL validation rules (``x-kubernetes-validations``) compiled and evaluated as kube-apiserver does.

The engine is ``cel-expr-python``, Google's Python binding of the C++ CEL implementation (the reference
runtime next to cel-go, which kube-apiserver uses). Each rule is compiled twice:

* **checked**, with ``self`` typed by the schema: every object node becomes a protobuf message built on the
  fly, so an unknown field, a wrong operand type (``double + int``) or a non-bool rule is a compile error, as
  cel-go's checker reports it at CRD creation;
* **unchecked**, for evaluation on the plain JSON value: objects are maps, so reading an absent field is the
  runtime error ``no such key: <field>`` that a real server reports (a protobuf message would return a
  default instead), and ``has()`` tests presence.

Semantics kept from kube-apiserver: ``self`` is the value at the rule's node (numbers typed by the schema:
``number`` is always a double); rules that use ``oldSelf`` (transition rules) run only on updates where the
old value exists, unless ``optionalOldSelf`` makes ``oldSelf`` an ``optional``; ``message`` /
``messageExpression`` / ``fieldPath`` / ``reason`` shape the error; a null value is not validated; at the
root of a resource only ``apiVersion``, ``kind``, ``metadata.name`` and ``metadata.generateName`` are visible;
errors of rules that do not use ``oldSelf`` are ratcheted (dropped) when the value is unchanged on update.

Not emulated: CEL cost estimation and runtime cost budgets; the Kubernetes CEL libraries (lists, regex
``find``, URLs, IP/CIDR, quantity, format, semver) and two-variable comprehensions, which compile as
undeclared references here; order-insensitive equality of ``set``/``map`` lists.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import itertools
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

Json = dict[str, Any]

__all__ = [
    "CelCause",
    "CompiledRule",
    "FieldPathError",
    "RuleValidator",
    "compile_rules",
    "escape_property",
    "normalize_field_path",
    "render_path",
]

#: CEL keywords and reserved words: a property with such a name is written ``__name__`` in a rule.
_RESERVED: Final = frozenset({
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
    "import", "let", "loop", "package", "namespace", "return", "var", "void", "while",
})
_IDENT = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_REASONS: Final = {
    "FieldValueInvalid": "Invalid value", "FieldValueForbidden": "Forbidden",
    "FieldValueRequired": "Required value", "FieldValueDuplicate": "Duplicate value",
}
SUPPORTED_REASONS: Final = tuple(_REASONS)


def escape_property(name: str) -> str | None:
    """The name by which a rule reads property ``name`` (Kubernetes' escaping), or None if it cannot."""
    if name in _RESERVED:
        return f"__{name}__"
    escaped = (name.replace("__", "__underscores__").replace(".", "__dot__").replace("-", "__dash__")
               .replace("/", "__slash__"))
    return escaped if _IDENT.match(escaped) else None


# ----- paths ------------------------------------------------------------------------------------------

Segment = tuple[str, str]  # ("child" | "index" | "key", text)


def render_path(segments: Sequence[Segment]) -> str:
    """A field path as ``field.Path`` prints it: ``a.b[0][key]``; the root is ``<nil>``."""
    out = ""
    for kind, text in segments:
        out += f"[{text}]" if kind in ("index", "key") else (f".{text}" if out else text)
    return out or "<nil>"


class FieldPathError(ValueError):
    """A rule's ``fieldPath`` that does not name a field of its schema."""


def _field_path_tokens(path: str) -> Iterator[str]:
    i = 0
    while i < len(path):
        ch = path[i]
        if ch in ".[]":
            yield ch
            i += 1
        elif ch == "'":
            j = i + 1
            while j < len(path) and not (path[j] == "'" and path[j - 1] != "\\"):
                j += 1
            yield path[i:j + 1]
            i = j + 1
        else:
            j = i
            while j < len(path) and path[j] not in ".[]":
                j += 1
            yield path[i:j]
            i = j


def normalize_field_path(path: str, schema: Mapping[str, Any]) -> list[Segment]:
    """Resolve a rule's ``fieldPath`` (``.a.b``, ``.m['k']``) against its schema, as a real server checks it."""
    tokens = list(_field_path_tokens(path))
    segments: list[Segment] = []
    node: Mapping[str, Any] = schema
    n = 0

    def step(name: str) -> None:
        nonlocal node
        properties = node.get("properties")
        additional = node.get("additionalProperties")
        if properties is not None:
            if name not in properties:
                raise FieldPathError("does not refer to a valid field")
            segments.append(("child", name))
            node = properties[name]
        elif isinstance(additional, Mapping):
            segments.append(("key", name))
            node = additional
        else:
            raise FieldPathError("does not refer to a valid field")

    while n < len(tokens):
        token = tokens[n]
        if token == ".":
            if n + 1 >= len(tokens):
                raise FieldPathError("unexpected end of JSON path")
            step(tokens[n + 1])
            n += 2
        elif token == "[":
            if n + 1 >= len(tokens):
                raise FieldPathError("unexpected end of JSON path")
            quoted = tokens[n + 1]
            if len(quoted) < 2 or quoted[0] != "'" or quoted[-1] != "'":
                raise FieldPathError(f"expected single quoted string but got {quoted}")
            step(quoted[1:-1].replace("\\'", "'").replace("\\\\", "\\"))
            if n + 2 >= len(tokens):
                raise FieldPathError("unexpected end of JSON path")
            if tokens[n + 2] != "]":
                raise FieldPathError(f"expected ] but got {tokens[n + 2]}")
            n += 3
        else:
            raise FieldPathError(f"expected [ or . but got: {token}")
    return segments


# ----- schema -> CEL types (protobuf messages, for the checker) --------------------------------------------

@dataclass(frozen=True)
class _T:
    kind: str  # string int double bool bytes timestamp duration dyn object list map
    message: str = ""
    elem: _T | None = None


_SCALAR_PROTO: Final = {"string": 9, "int": 3, "double": 1, "bool": 8, "bytes": 12}  # FieldDescriptorProto types
_WKT: Final = {"timestamp": ".google.protobuf.Timestamp", "duration": ".google.protobuf.Duration",
               "dyn": ".google.protobuf.Value"}
_package_counter = itertools.count(1)
_pb_lock = threading.Lock()


def _is_object_like(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "object" and not isinstance(schema.get("additionalProperties"), Mapping) \
        and schema.get("additionalProperties") is not True


def _map_entry_name(field_name: str) -> str:
    out, upper = [], True
    for ch in field_name:
        if ch == "_":
            upper = True
        elif upper:
            out.append(ch.upper())
            upper = False
        else:
            out.append(ch)
    return "".join(out) + "Entry"


class _TypeBuilder:
    """Builds one protobuf file whose messages mirror the object nodes of a schema."""

    def __init__(self) -> None:
        from google.protobuf import descriptor_pb2

        self._pb = descriptor_pb2
        self.package = f"etj.cel.s{next(_package_counter)}"
        self.file = descriptor_pb2.FileDescriptorProto(name=f"{self.package.replace('.', '/')}.proto",
                                                       package=self.package, syntax="proto2")
        for dep in ("google/protobuf/struct.proto", "google/protobuf/timestamp.proto",
                    "google/protobuf/duration.proto"):
            self.file.dependency.append(dep)
        self._count = 0
        self._types: dict[int, tuple[Mapping[str, Any], _T]] = {}

    def type_of(self, schema: Mapping[str, Any] | None, *, root: bool = False) -> _T:
        """The CEL type of values of ``schema`` (objects become messages of this file)."""
        if schema is None:
            return _T("dyn")
        cached = self._types.get(id(schema))
        if cached is not None and cached[0] is schema and not root:
            return cached[1]
        result = self._build(schema, root=root or bool(schema.get("x-kubernetes-embedded-resource")))
        if not root:
            self._types[id(schema)] = (schema, result)
        return result

    def _build(self, schema: Mapping[str, Any], *, root: bool) -> _T:
        if schema.get("x-kubernetes-int-or-string"):
            return _T("dyn")
        kind = schema.get("type")
        if kind == "string":
            fmt = schema.get("format")
            return _T({"byte": "bytes", "date": "timestamp", "date-time": "timestamp",
                       "duration": "duration"}.get(fmt or "", "string"))
        if kind in ("integer", "number", "boolean"):
            return _T({"integer": "int", "number": "double", "boolean": "bool"}[kind])
        if kind == "array":
            return _T("list", elem=self.type_of(schema.get("items")))
        if kind == "object" or root:
            additional = schema.get("additionalProperties")
            if isinstance(additional, Mapping) and not schema.get("properties"):
                return _T("map", elem=self.type_of(additional))
            if additional is True and not schema.get("properties"):
                return _T("map", elem=_T("dyn"))
            return self._message(schema, root=root)
        return _T("dyn")

    def _message(self, schema: Mapping[str, Any], *, root: bool) -> _T:
        self._count += 1
        name = f"M{self._count}"
        message = self.file.message_type.add(name=name)
        full = f"{self.package}.{name}"
        properties: dict[str, Any] = dict(schema.get("properties") or {})
        if root:
            properties.setdefault("apiVersion", {"type": "string"})
            properties.setdefault("kind", {"type": "string"})
            meta = properties.get("metadata") or {}
            meta_props = meta.get("properties") or {}
            properties["metadata"] = {"type": "object", "properties": {
                "name": meta_props.get("name") or {"type": "string"},
                "generateName": meta_props.get("generateName") or {"type": "string"},
            }}
        number = 0
        for prop, sub in properties.items():
            escaped = escape_property(prop)
            if escaped is None or not isinstance(sub, Mapping):
                continue
            number += 1
            self._add_field(message, escaped, number, self.type_of(sub))
        return _T("object", message=full)

    def _add_field(self, message: Any, name: str, number: int, t: _T) -> None:
        f = self._pb.FieldDescriptorProto
        if t.kind == "map":
            entry = message.nested_type.add(name=_map_entry_name(name))
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
            value = t.elem or _T("dyn")
            if value.kind in ("list", "map"):
                value = _T("dyn")
            self._set_type(entry.field.add(name="value", number=2, label=f.LABEL_OPTIONAL), value)
            message.field.add(name=name, number=number, label=f.LABEL_REPEATED, type=f.TYPE_MESSAGE,
                              type_name=f".{message_full_name(self.package, message, entry)}")
            return
        if t.kind == "list":
            elem = t.elem or _T("dyn")
            if elem.kind in ("list", "map"):
                elem = _T("dyn")
            self._set_type(message.field.add(name=name, number=number, label=f.LABEL_REPEATED), elem)
            return
        self._set_type(message.field.add(name=name, number=number, label=f.LABEL_OPTIONAL), t)

    def _set_type(self, proto_field: Any, t: _T) -> None:
        f = self._pb.FieldDescriptorProto
        if t.kind in _SCALAR_PROTO:
            proto_field.type = _SCALAR_PROTO[t.kind]
        elif t.kind == "object":
            proto_field.type = f.TYPE_MESSAGE
            proto_field.type_name = f".{t.message}"
        else:
            proto_field.type = f.TYPE_MESSAGE
            proto_field.type_name = _WKT.get(t.kind, _WKT["dyn"])

    def pool(self) -> Any:
        """A descriptor pool with the well-known types and this file."""
        from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, struct_pb2, timestamp_pb2

        pool = descriptor_pool.DescriptorPool()
        for module in (struct_pb2, timestamp_pb2, duration_pb2):
            proto = descriptor_pb2.FileDescriptorProto()
            module.DESCRIPTOR.CopyToProto(proto)
            pool.Add(proto)
        pool.Add(self.file)
        return pool


def message_full_name(package: str, parent: Any, nested: Any) -> str:
    """The full name of a message nested in a top-level message of ``package``."""
    return f"{package}.{parent.name}.{nested.name}"


def _cel_type(t: _T) -> Any:
    from cel_expr_python import cel

    simple = {"string": cel.Type.STRING, "int": cel.Type.INT, "double": cel.Type.DOUBLE, "bool": cel.Type.BOOL,
              "bytes": cel.Type.BYTES, "timestamp": cel.Type.TIMESTAMP, "duration": cel.Type.DURATION,
              "dyn": cel.Type.DYN}
    if t.kind in simple:
        return simple[t.kind]
    if t.kind == "object":
        return cel.Type(t.message)
    if t.kind == "list":
        return cel.Type.List(_cel_type(t.elem or _T("dyn")))
    return cel.Type.Map(cel.Type.STRING, _cel_type(t.elem or _T("dyn")))


def _extensions() -> list[Any]:
    from cel_expr_python.ext import ext_bindings, ext_optional, ext_strings

    return [ext_optional.ExtOptional(), ext_bindings.ExtBindings(), ext_strings.ExtStrings()]


_runtime_env: Any = None


def _runtime() -> Any:
    global _runtime_env
    if _runtime_env is None:
        from cel_expr_python import cel

        dyn = cel.Type.DYN
        _runtime_env = cel.NewEnv(variables={"self": dyn, "oldSelf": dyn, "__old": dyn, "__hasOld": cel.Type.BOOL},
                                  extensions=_extensions())
    return _runtime_env


# ----- compile ------------------------------------------------------------------------------------------

_OLD_SELF = re.compile(r"\boldSelf\b")
_STRING_LITERAL = re.compile(r"""(?s)[rR]?('''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*")""")
_ERROR_LINE = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*)")
_CROSS_NUMERIC = re.compile(r"found no matching overload for '_(<|<=|>|>=)_' applied to "
                            r"'\((int|uint|double), (int|uint|double)\)'")
_OPTIONAL_WRAP = "cel.bind(oldSelf, optional.of(__oldChecked), ("


def _uses_old_self(expression: str) -> bool:
    return bool(_OLD_SELF.search(_STRING_LITERAL.sub("''", expression)))


def _checker_errors(text: str, source: str, shift: int) -> list[str]:
    """The checker's errors as cel-go words them (positions in the rule's own text)."""
    lines: list[str] = []
    matched = False
    for match in _ERROR_LINE.finditer(text):
        matched = True
        row, col, message = int(match[1]), int(match[2]), match[3].strip()
        if _CROSS_NUMERIC.search(message):
            continue  # kube-apiserver enables cross-type numeric comparisons; cel-cpp's checker does not
        if row == 1:
            col = max(1, col - shift)
        message = re.sub(r" not found in struct '[^']*'", "", message)
        message = re.sub(r"'?etj\.cel\.s\d+\.M\d+'?", "object", message)
        message = re.sub(r"\s*\[[A-Z_]+\]\s*$", "", message)
        snippet = source.splitlines()[row - 1] if row - 1 < len(source.splitlines()) else ""
        lines.append(f"ERROR: <input>:{row}:{col}: {message}\n | {snippet}\n | {'.' * (col - 1)}^")
    if not matched:
        lines.append(re.sub(r"\s*\[[A-Z_]+\]\s*$", "", text.split(":", 1)[-1].strip()))
    return lines


@dataclass
class CompiledRule:
    """One compiled ``x-kubernetes-validations`` entry of a schema node."""

    index: int
    rule: str
    message: str
    message_expression: str
    field_path: list[Segment]
    reason: str | None
    uses_old_self: bool
    optional_old_self: bool
    error: str = ""  # compile error of the rule ("" when it compiled)
    message_error: str = ""  # compile error of the messageExpression
    program: Any = None
    message_program: Any = None

    @property
    def error_string(self) -> str:
        """The rule as a real server names it in errors: its message, else its text."""
        return self.message.strip() or self.rule.strip()

    @property
    def default_message(self) -> str:
        """The message of a failure when there is no messageExpression."""
        return self.message.strip() or f"failed rule: {self.rule.strip()}"


def _check(env: Any, expression: str, *, optional_old: bool, want: str) -> str:
    """Type-check ``expression``; returns "" or the compile error text."""
    source, shift = expression, 0
    if optional_old:
        source, shift = f"{_OPTIONAL_WRAP}{expression}))", len(_OPTIONAL_WRAP)
    try:
        checked = env.compile(source)
    except Exception as e:  # the binding raises RuntimeError with the checker's report
        errors = _checker_errors(str(e), expression, shift)
        return "\n".join(errors)
    kind = checked.return_type().name()
    if want == "bool" and kind not in ("bool", "BOOL", "dyn", "DYN"):
        return "cel expression must evaluate to a bool"
    if want == "string" and kind not in ("string", "STRING", "dyn", "DYN"):
        return "must evaluate to a string"
    return ""


def _runtime_program(expression: str, *, optional_old: bool) -> Any:
    source = expression
    if optional_old:
        source = f"cel.bind(oldSelf, __hasOld ? optional.of(__old) : optional.none(), ({expression}))"
    return _runtime().compile(source, disable_check=True)


def compile_rules(schema: Mapping[str, Any], *, root: bool = False,
                  builder: _TypeBuilder | None = None) -> list[CompiledRule]:
    """Compile the rules of one schema node (``root``: the node is a resource's root)."""
    rules = schema.get("x-kubernetes-validations") or []
    if not rules:
        return []
    from cel_expr_python import cel

    with _pb_lock:
        builder = builder or _TypeBuilder()
        node_type = builder.type_of(schema, root=root)
        pool = builder.pool()
        self_type = _cel_type(node_type)
        env = cel.NewEnv(pool, variables={"self": self_type, "oldSelf": self_type, "__oldChecked": self_type},
                         extensions=_extensions())
    compiled: list[CompiledRule] = []
    for index, raw in enumerate(rules):
        rule = str(raw.get("rule") or "")
        optional_old = bool(raw.get("optionalOldSelf"))
        entry = CompiledRule(index=index, rule=rule, message=str(raw.get("message") or ""),
                             message_expression=str(raw.get("messageExpression") or ""), field_path=[],
                             reason=raw.get("reason"), uses_old_self=_uses_old_self(rule),
                             optional_old_self=optional_old)
        if raw.get("fieldPath"):
            try:
                entry.field_path = normalize_field_path(str(raw["fieldPath"]).strip(), schema)
            except FieldPathError:
                entry.field_path = []
        if not rule.strip():
            compiled.append(entry)
            continue
        entry.error = _check(env, rule, optional_old=optional_old and entry.uses_old_self, want="bool")
        if not entry.error:
            try:
                entry.program = _runtime_program(rule, optional_old=optional_old and entry.uses_old_self)
            except Exception as e:  # parse errors are found by the checker first; this is a safety net
                entry.error = str(e)
        if entry.message_expression:
            entry.message_error = _check(env, entry.message_expression, optional_old=False, want="string")
            if not entry.message_error:
                entry.message_program = _runtime().compile(entry.message_expression, disable_check=True)
        compiled.append(entry)
    return compiled


# ----- runtime values ---------------------------------------------------------------------------------

def _parse_time(text: str) -> Any:
    """A ``date``/``date-time`` string as a CEL timestamp (cel-expr-python takes protobuf Timestamps in data)."""
    from google.protobuf import timestamp_pb2

    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(parsed)
    return stamp


def to_cel_value(value: Any, schema: Mapping[str, Any] | None, *, root: bool = False) -> Any:
    """The value a rule sees: typed by the schema, declared properties only, names escaped."""
    if value is None or schema is None or schema.get("x-kubernetes-int-or-string"):
        return value
    kind = schema.get("type")
    if isinstance(value, Mapping):
        additional = schema.get("additionalProperties")
        properties = schema.get("properties")
        if properties is None and isinstance(additional, Mapping):
            return {str(k): to_cel_value(v, additional) for k, v in value.items()}
        if properties is None and (additional is True or kind is None):
            return dict(value)
        result: Json = {}
        props: dict[str, Any] = dict(properties or {})
        if root or schema.get("x-kubernetes-embedded-resource"):
            props.setdefault("apiVersion", {"type": "string"})
            props.setdefault("kind", {"type": "string"})
            props["metadata"] = {"type": "object", "properties": {"name": {"type": "string"},
                                                                  "generateName": {"type": "string"}}}
        for key, item in value.items():
            if key in props:
                escaped = escape_property(key)
                if escaped is not None:
                    result[escaped] = to_cel_value(item, props[key])
        return result
    if isinstance(value, list):
        return [to_cel_value(item, schema.get("items")) for item in value]
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "string" and isinstance(value, str):
        fmt = schema.get("format")
        if fmt in ("date", "date-time"):
            return _parse_time(value)
        if fmt == "byte":
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return value
    return value


def _go_error(message: str) -> str:
    """A cel-cpp runtime error worded as cel-go words it (the words a real server reports)."""
    key = re.search(r'Key not found in map : "?(.*?)"?\s*$', message)
    if key:
        return f"no such key: {key[1]}"
    if "No matching overloads" in message or "no matching overload" in message:
        return "no such overload"
    if "divide by zero" in message or "division by zero" in message:
        return "division by zero"
    if "modulus by zero" in message:
        return "modulus by zero"
    if "integer overflow" in message or "overflow" in message.lower():
        return "integer overflow"
    index = re.search(r"[Ii]ndex error: index=(-?\d+)", message) or re.search(
        r"[Ii]ndex out of (?:range|bounds)\D*(-?\d+)?", message)
    if index:
        return f"index out of bounds: {index[1]}" if index[1] else "index out of bounds"
    return re.sub(r"^[A-Z_]+: ", "", message)


def _evaluate(program: Any, data: Mapping[str, Any]) -> tuple[Any, str]:
    try:
        result = program.eval(data=dict(data))
    except Exception as e:
        return None, _go_error(str(e))
    if result.type().name() in ("ERROR", "error"):
        return None, _go_error(str(result.plain_value()))
    return result.plain_value(), ""


# ----- validation -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CelCause:
    """One failed rule: the field path, the reason and the message body, as a ``field.Error``."""

    field: str
    reason: str
    detail: str
    type_name: str = "object"

    @property
    def body(self) -> str:
        """The error without its field, as a Status cause's message: ``Invalid value: "object": ...``."""
        if self.reason == "FieldValueForbidden":
            return f"Forbidden: {self.detail}"
        if self.reason == "FieldValueRequired":
            return f"Required value: {self.detail}"
        if self.reason == "FieldValueDuplicate":
            return f'Duplicate value: "{self.type_name}"'
        return f'Invalid value: "{self.type_name}": {self.detail}'

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


@dataclass
class _Node:
    schema: Mapping[str, Any]
    root: bool
    rules: list[CompiledRule] = field(default_factory=list)
    properties: dict[str, _Node] = field(default_factory=dict)
    items: _Node | None = None
    additional: _Node | None = None


def _has_rules(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return False
    if schema.get("x-kubernetes-validations"):
        return True
    if _has_rules(schema.get("items")) or _has_rules(schema.get("additionalProperties")):
        return True
    return any(_has_rules(sub) for sub in (schema.get("properties") or {}).values())


def _build(schema: Mapping[str, Any], root: bool) -> _Node | None:
    if not _has_rules(schema):
        return None
    root = root or bool(schema.get("x-kubernetes-embedded-resource"))
    node = _Node(schema, root, compile_rules(schema, root=root))
    for name, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, Mapping) and (child := _build(sub, False)) is not None:
            node.properties[name] = child
    if isinstance(schema.get("items"), Mapping):
        node.items = _build(schema["items"], False)
    if isinstance(schema.get("additionalProperties"), Mapping):
        node.additional = _build(schema["additionalProperties"], False)
    return node


class RuleValidator:
    """All the CEL rules of one schema, compiled once; :meth:`validate` walks an object as a real server."""

    def __init__(self, schema: Mapping[str, Any], *, root: bool = True) -> None:
        self.schema = schema
        self._root = _build(schema, root)

    @property
    def empty(self) -> bool:
        """The schema has no rule at all (a real server then has no CEL validator for the resource)."""
        return self._root is None

    @property
    def compile_errors(self) -> list[tuple[list[Segment], CompiledRule]]:
        """Every rule that failed to compile, with the schema path of its node."""
        found: list[tuple[list[Segment], CompiledRule]] = []

        def walk(node: _Node | None, path: list[Segment]) -> None:
            if node is None:
                return
            found.extend((path, r) for r in node.rules if r.error or r.message_error)
            for name, child in node.properties.items():
                walk(child, [*path, ("child", "properties"), ("key", name)])
            walk(node.items, [*path, ("child", "items")])
            walk(node.additional, [*path, ("child", "additionalProperties")])

        walk(self._root, [])
        return found

    def validate(self, value: Any, old: Any = None, *, path: Sequence[Segment] = (),
                 ratcheting: bool = True) -> list[CelCause]:
        """The failed rules for ``value`` (``old``: the stored value on update, else None)."""
        causes: list[CelCause] = []
        if self._root is not None:
            unchanged = ratcheting and old is not None and old == value
            self._walk(self._root, value, old, list(path), unchanged, ratcheting, causes)
        return causes

    def _walk(self, node: _Node, value: Any, old: Any, path: list[Segment], unchanged: bool,
              ratcheting: bool, causes: list[CelCause]) -> None:
        if value is None:
            return
        if node.rules:
            self._run_rules(node, value, old, path, unchanged, causes)
        if isinstance(value, Mapping):
            old_map = old if isinstance(old, Mapping) else {}
            for key, item in value.items():
                child = node.properties.get(key) if node.properties else None
                step: Segment = ("child", key)
                if child is None and node.additional is not None and not node.schema.get("properties"):
                    child, step = node.additional, ("key", key)
                if child is None:
                    continue
                old_item = old_map.get(key)
                same = ratcheting and key in old_map and old_item == item
                self._walk(child, item, old_item, [*path, step], same, ratcheting, causes)
        elif isinstance(value, list) and node.items is not None:
            keys = node.schema.get("x-kubernetes-list-map-keys") or []
            by_key: dict[Any, Any] = {}
            map_list = node.schema.get("x-kubernetes-list-type") == "map" and keys
            if map_list and isinstance(old, list):
                for item in old:
                    if isinstance(item, Mapping):
                        by_key.setdefault(tuple(repr(item.get(k)) for k in keys), item)
            for index, item in enumerate(value):
                old_item = None
                same = unchanged  # an item of a plain list ratchets with its list
                if map_list:
                    if isinstance(item, Mapping):
                        old_item = by_key.get(tuple(repr(item.get(k)) for k in keys))
                    same = ratcheting and old_item is not None and old_item == item
                self._walk(node.items, item, old_item, [*path, ("index", str(index))], same, ratcheting, causes)

    def _run_rules(self, node: _Node, value: Any, old: Any, path: list[Segment], unchanged: bool,
                   causes: list[CelCause]) -> None:
        type_name = str(node.schema.get("type") or "")
        here = render_path(path)
        self_value = to_cel_value(value, node.schema, root=node.root)
        old_value = to_cel_value(old, node.schema, root=node.root) if old is not None else None
        for rule in node.rules:
            if rule.error:
                causes.append(CelCause(here, "FieldValueInvalid", f"rule compile error: {rule.error}", type_name))
                continue
            if rule.program is None:
                continue
            if rule.uses_old_self and old is None and not rule.optional_old_self:
                continue  # a transition rule needs an old value
            data: Json = {"self": self_value}
            if rule.uses_old_self:
                data.update(oldSelf=old_value, __old=old_value, __hasOld=old is not None)
            result, error = _evaluate(rule.program, data)
            if error:
                if error == "no such overload":
                    detail = (f"'{error}': call arguments did not match a supported operator, function or macro"
                              f" signature for rule: {rule.error_string}")
                else:
                    detail = f"{error} evaluating rule: {rule.error_string}"
                causes.append(CelCause(here, "FieldValueInvalid", detail, type_name))
                continue
            if result is True:
                continue
            if unchanged and not rule.uses_old_self:
                continue  # ratcheting: an unchanged value keeps passing (a real server only warns)
            detail = ""
            if rule.message_program is not None:
                text, msg_error = _evaluate(rule.message_program, data)
                if not msg_error and isinstance(text, str) and text.strip() and "\n" not in text.strip():
                    detail = text.strip()
            detail = detail or rule.default_message
            where = render_path([*path, *rule.field_path])
            reason = rule.reason if rule.reason in _REASONS else "FieldValueInvalid"
            causes.append(CelCause(where, reason, detail, type_name))
