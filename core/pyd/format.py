"""``--format``: a Go text/template subset, docker's template functions, and docker's tables.

Supported, as in docker's ``--format``:

* actions ``{{.Field}}``, ``{{.A.B}}``, ``{{.}}``, ``{{$}}``, variables (``{{$x := .A}}``),
  pipelines (``{{.Name | upper}}``: the value becomes the last argument), parentheses,
  ``{{if}}/{{else if}}/{{else}}/{{end}}``, ``{{range}}`` (with ``$i, $v :=``) and ``{{with}}``,
  comments ``{{/* */}}`` and whitespace trimming ``{{-``/``-}}``;
* functions: docker's ``json``, ``join``, ``split``, ``title``, ``lower``, ``upper``, ``pad``,
  ``truncate``, ``println``, and Go's ``print``, ``printf``, ``len``, ``index``, ``slice``,
  ``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge``, ``not``, ``and``, ``or``;
* the ``table`` prefix (``table {{.ID}}\\t{{.Image}}``): a header row derived from the field
  names (``CreatedAt`` → ``CREATED AT``; commands override some, e.g. ``ID`` → ``CONTAINER ID``)
  and columns aligned like Go's tabwriter as docker configures it (min width 10, padding 3);
* the literal word ``json`` as a format, meaning ``{{json .}}``.

Values print as Go's ``%v`` does: a missing map key is ``<no value>``, null is ``<nil>``,
lists ``[a b]``, maps ``map[k:v]``. Data is JSON-like (dicts, lists, scalars) or any object
whose attributes are the fields (methods are called, with arguments if the template gives some);
an object can define ``__json__()`` for the ``json`` function. ``JSONView`` maps Go field names
onto the keys of an API object whose JSON keys differ (``ID`` → ``id`` in events).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from pyd.errors import InvalidParameter

__all__ = [
    "JSONView",
    "Template",
    "TemplateError",
    "derive_header",
    "format_list",
    "format_one",
    "go_str",
    "is_table",
    "tabulate",
    "tabwrite",
]


class TemplateError(InvalidParameter):
    """A ``--format`` template that does not parse or cannot be executed on the data."""


def _perr(message: str) -> TemplateError:
    return TemplateError(f"template parsing error: {message}")


class _Missing:
    """A map key that is not there: prints ``<no value>``, is false, is JSON null."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<no value>"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()
_NOARG: Any = object()


class JSONView:
    """Present an API object under Go field names: ``JSONView(event, {"ID": "id"})`` makes
    ``{{.ID}}`` read ``event["id"]`` while ``{{json .}}`` still prints ``event`` unchanged.
    Names not in ``names`` are looked up as given."""

    __slots__ = ("data", "names")

    def __init__(self, data: Mapping[str, Any], names: Mapping[str, str] | None = None) -> None:
        self.data = data
        self.names = names or {}

    def lookup(self, name: str) -> Any:
        return self.data.get(self.names.get(name, name), MISSING)

    def __json__(self) -> Any:
        return self.data


# -- value printing ------------------------------------------------------------------------------


def _go_float(f: float) -> str:
    """Go's %v of a float64 (strconv 'g', shortest): exponent form when exp < -4 or exp >= 6."""
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    r = repr(f)
    mant, _, exp_s = r.partition("e")
    sign = "-" if mant.startswith("-") else ""
    mant = mant.lstrip("-")
    int_part, _, frac = mant.partition(".")
    digits = (int_part + frac).lstrip("0")
    lead_zeros = len(int_part + frac) - len((int_part + frac).lstrip("0"))
    if not digits:
        return sign + "0"
    # decimal exponent of the first significant digit
    exp = len(int_part) - 1 - lead_zeros + int(exp_s or 0)
    digits = digits.rstrip("0") or "0"
    if exp < -4 or exp >= 6:
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{m}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{sign}0.{'0' * (-exp - 1)}{digits}"
    if len(digits) <= exp + 1:
        return sign + digits + "0" * (exp + 1 - len(digits))
    return f"{sign}{digits[: exp + 1]}.{digits[exp + 1 :]}"


def go_str(value: Any) -> str:
    """Format ``value`` as Go's ``fmt`` ``%v`` would print the decoded JSON value."""
    if isinstance(value, str):
        return value
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, JSONView):
        return go_str(value.data)
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{go_str(k)}:{go_str(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_str(v) for v in value) + "]"
    return str(value)


def _json_default(obj: Any) -> Any:
    if obj is MISSING:
        return None
    to_json = getattr(obj, "__json__", None)
    if to_json is not None:
        return to_json()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def to_json(value: Any) -> str:
    """docker's ``json`` template function: compact, UTF-8, HTML characters not escaped."""
    if value is MISSING:
        return "null"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _truth(value: Any) -> bool:
    if value is MISSING or value is None:
        return False
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    if isinstance(value, Mapping):
        return len(value) > 0
    return True


# -- functions -----------------------------------------------------------------------------------


def _join(items: Any, sep: str) -> str:
    if items is MISSING or items is None:
        return ""
    if isinstance(items, str):
        return items
    if isinstance(items, Mapping):
        items = [items[k] for k in sorted(items)]
    return sep.join(go_str(i) for i in items)


def _split(s: Any, sep: str) -> list[str]:
    s = go_str(s)
    return list(s) if sep == "" else s.split(sep)


def _title(s: Any) -> str:
    return re.sub(r"(^|[^\w'])(\w)", lambda m: m.group(1) + m.group(2).upper(), go_str(s))


def _pad(s: Any, before: int, after: int) -> str:
    return " " * int(before) + go_str(s) + " " * int(after)


def _truncate(s: Any, length: int) -> str:
    s = go_str(s)
    return s if len(s) < int(length) else s[: int(length)]


def _sprint(*args: Any) -> str:
    out = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_str(a))
    return "".join(out)


def _sprintln(*args: Any) -> str:
    return " ".join(go_str(a) for a in args) + "\n"


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _sprintf(fmt: str, *args: Any) -> str:
    it = iter(args)

    def one(m: re.Match[str]) -> str:
        flags, width, prec, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        if verb == "%":
            return "%"
        arg = next(it, _NOARG)
        if arg is _NOARG:
            return f"%!{verb}(MISSING)"
        try:
            if verb in "vs":
                s = go_str(arg)
                if prec is not None:
                    s = s[: int(prec)]
            elif verb == "q":
                s = json.dumps(go_str(arg), ensure_ascii=False)
            elif verb == "t":
                s = go_str(bool(arg)) if isinstance(arg, bool) else f"%!t({go_str(arg)})"
            elif verb in "dxXob":
                if isinstance(arg, str) and verb in "xX":
                    s = arg.encode().hex()
                    s = s.upper() if verb == "X" else s
                else:
                    spec = {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb]
                    s = format(int(arg), ("+" if "+" in flags else "") + spec)
            elif verb in "feEgG":
                p = f".{prec}" if prec is not None else ("" if verb in "gG" else ".6")
                s = format(float(arg), ("+" if "+" in flags else "") + p + verb)
            else:
                s = go_str(arg)
        except (TypeError, ValueError):
            return f"%!{verb}({go_str(arg)})"
        if width:
            w = int(width)
            if "-" in flags:
                s = s.ljust(w)
            elif "0" in flags and verb not in "vsq":
                s = s.rjust(w, "0")
            else:
                s = s.rjust(w)
        return s

    out = _VERB.sub(one, fmt)
    extra = list(it)
    if extra:
        out += "%!(EXTRA " + ", ".join(go_str(e) for e in extra) + ")"
    return out


def _len(value: Any) -> int:
    if value is MISSING or value is None:
        return 0
    try:
        return len(value)
    except TypeError:
        raise TemplateError(f"len of type {type(value).__name__}") from None


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if value is MISSING or value is None:
            return MISSING
        if isinstance(value, Mapping):
            value = value.get(key, MISSING)
        elif isinstance(value, JSONView):
            value = value.lookup(key)
        else:
            try:
                value = value[int(key)]
            except (IndexError, TypeError, ValueError):
                raise TemplateError(f"index {key!r} out of range or not an index") from None
    return value


def _slice(value: Any, *idx: Any) -> Any:
    if len(idx) > 2:
        raise TemplateError("slice takes at most two indices here")
    return value[slice(*(int(i) for i in idx))]


def _cmp(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        try:
            return op(a, b)
        except TypeError:
            raise TemplateError(f"incompatible types for comparison: {a!r}, {b!r}") from None

    return compare


def _eq(a: Any, *bs: Any) -> bool:
    return any(a == b for b in bs)


def _and(*args: Any) -> Any:
    for a in args:
        if not _truth(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    for a in args:
        if _truth(a):
            return a
    return args[-1]


FUNCTIONS: dict[str, Callable[..., Any]] = {
    # docker's template functions (docker/cli templates.basicFunctions)
    "json": to_json,
    "join": _join,
    "split": _split,
    "title": _title,
    "lower": lambda s: go_str(s).lower(),
    "upper": lambda s: go_str(s).upper(),
    "pad": _pad,
    "truncate": _truncate,
    "println": _sprintln,
    # Go text/template builtins
    "print": _sprint,
    "printf": _sprintf,
    "len": _len,
    "index": _index,
    "slice": _slice,
    "eq": _eq,
    "ne": lambda a, b: a != b,
    "lt": _cmp(lambda a, b: a < b),
    "le": _cmp(lambda a, b: a <= b),
    "gt": _cmp(lambda a, b: a > b),
    "ge": _cmp(lambda a, b: a >= b),
    "not": lambda a: not _truth(a),
    "and": _and,
    "or": _or,
}

# In the header row these return the header they are given (docker's HeaderFunctions), so
# ``table {{join .Names ","}}`` still has the header NAMES.
_HEADER_PASSTHROUGH = ("json", "join", "split", "title", "lower", "upper", "truncate")


# -- headers -----------------------------------------------------------------------------------


def derive_header(name: str) -> str:
    """``CreatedAt`` → ``CREATED AT``, ``ID`` → ``ID``, ``ContainerID`` → ``CONTAINER ID``."""
    # a word starts at an upper-case letter after a lower-case one or a digit, or at the last
    # capital of an acronym followed by a word (IPAddress -> IP ADDRESS, but IPv6 -> IPV6)
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z]{2})", " ", name)
    return words.replace("_", " ").upper()


class _HeaderView:
    """The data of the header row: every field is its header text."""

    __slots__ = ("headers",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers

    def lookup(self, name: str) -> _HeaderText:
        return _HeaderText(self.headers.get(name) or derive_header(name), self)

    def __str__(self) -> str:
        return ""


class _HeaderText(str):
    """A header; a nested field of it (``.Config.Image``) is the header of the last name."""

    view: _HeaderView

    def __new__(cls, text: str, view: _HeaderView) -> _HeaderText:
        obj = super().__new__(cls, text)
        obj.view = view
        return obj


# -- lexing and parsing --------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\\n]|\\.)+')
  | (?P<op>:=|[|(),=])
  | (?P<var>\$[A-Za-z0-9_]*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<num>[-+]?(?:0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][-+]?\d+)?))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.X,
)
_CHAIN = re.compile(r"(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a",
            "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


def _unquote(s: str) -> str:
    body = s[1:-1]
    if "\\" not in body:
        return body
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        n = body[i + 1]
        if n in "xuU":
            size = {"x": 2, "u": 4, "U": 8}[n]
            out.append(chr(int(body[i + 2 : i + 2 + size], 16)))
            i += 2 + size
        elif n in _ESCAPES:
            out.append(_ESCAPES[n])
            i += 2
        else:
            raise _perr(f"unknown escape sequence \\{n}")
    return "".join(out)


# Node shapes (tuples, first item the tag):
#   ("text", str) · ("action", pipe, src) · ("if", pipe, body, else_body, src)
#   ("range", pipe, body, else_body, src) · ("with", pipe, body, else_body, src)
# pipe = (decl_names, is_decl, [command, ...]); command = [operand, ...]
# operand = ("field", names) · ("var", name, names) · ("ident", name) · ("lit", value)
#         · ("pipe", pipe, names) · ("dot",)


def _split_template(text: str) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    pos, n = 0, len(text)
    trim_next = False
    while pos <= n:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        if trim_next:
            chunk = chunk.lstrip()
        if start < 0:
            if chunk:
                items.append(("text", chunk))
            break
        j = start + 2
        if text.startswith("-", j) and j + 1 < n and text[j + 1] in " \t\r\n":
            chunk = chunk.rstrip()
            j += 1
        if chunk:
            items.append(("text", chunk))
        k = j
        while k < n and not text.startswith("}}", k):
            c = text[k]
            if c in "\"`'":
                end = k + 1
                while end < n and text[end] != c:
                    end += 2 if (text[end] == "\\" and c != "`") else 1
                k = end + 1
            else:
                k += 1
        if k >= n:
            raise _perr("unclosed action")
        inner = text[j:k]
        trim_next = bool(re.search(r"\s-$", inner))
        if trim_next:
            inner = inner[:-1]
        inner = inner.strip()
        if not (inner.startswith("/*") and inner.endswith("*/")):
            items.append(("action", inner))
        pos = k + 2
    return items


class _Parser:
    def __init__(self, funcs: Mapping[str, Callable[..., Any]]) -> None:
        self.funcs = funcs

    # -- actions into nodes --------------------------------------------------------------

    def parse(self, text: str) -> list[tuple]:
        self.items = _split_template(text)
        self.pos = 0
        nodes, stop = self._list()
        if stop is not None:
            raise _perr(f"unexpected {{{{{stop[0]}}}}}")
        return nodes

    def _list(self) -> tuple[list[tuple], tuple[str, list[tuple[str, str]], str] | None]:
        """Parse nodes up to an ``end`` or ``else``; return them and that stopper."""
        nodes: list[tuple] = []
        while self.pos < len(self.items):
            kind, src = self.items[self.pos]
            self.pos += 1
            if kind == "text":
                nodes.append(("text", src))
                continue
            toks = self._tokens(src)
            if not toks:
                raise _perr("missing value for command")
            head = toks[0]
            word = head[1] if head[0] == "ident" else None
            if word in ("end", "else"):
                return nodes, (word, toks[1:], src)
            if word in ("if", "range", "with"):
                nodes.append(self._control(word, toks[1:], src))
            elif word in ("define", "template", "block", "break", "continue"):
                raise _perr(f"{{{{{word}}}}} is not supported")
            else:
                nodes.append(("action", self._pipeline(toks, src), src))
        return nodes, None

    def _control(self, word: str, toks: list[tuple[str, str]], src: str) -> tuple:
        if not toks:
            raise _perr(f"missing value for {word}")
        pipe = self._pipeline(toks, src, allow_two=(word == "range"))
        body, stop = self._list()
        else_body: list[tuple] = []
        if stop is None:
            raise _perr(f"unexpected EOF in {{{{{word}}}}}")
        if stop[0] == "else":
            rest = stop[1]
            if rest and rest[0] == ("ident", "if") and word == "if":
                # {{else if X}} shares the outer {{end}}
                else_body = [self._control("if", rest[1:], stop[2])]
                return ("if", pipe, body, else_body, src)
            if rest:
                raise _perr(f"unexpected {{{{{stop[2]}}}}}")
            else_body, stop = self._list()
            if stop is None or stop[0] != "end":
                raise _perr(f"expected {{{{end}}}} for {word}")
        if stop[1]:
            raise _perr(f"unexpected {{{{{stop[2]}}}}}")
        return (word, pipe, body, else_body, src)

    # -- tokens into pipelines -------------------------------------------------------------

    def _tokens(self, src: str) -> list[tuple[str, str]]:
        toks: list[tuple[str, str]] = []
        pos = 0
        while pos < len(src):
            m = _TOKEN.match(src, pos)
            if not m:
                raise _perr(f"unexpected {src[pos]!r} in {src!r}")
            kind = m.lastgroup or ""
            if kind != "space":
                toks.append((kind, m.group()))
                # a field chain right after a variable or ")" belongs to it: $v.A, (x).A
                if kind == "var" or (kind == "op" and m.group() == ")"):
                    c = _CHAIN.match(src, m.end())
                    if c:
                        toks.append(("chain", c.group()))
                        pos = c.end()
                        continue
            pos = m.end()
        return toks

    def _pipeline(
        self, toks: list[tuple[str, str]], src: str, allow_two: bool = False
    ) -> tuple[list[str], bool, list[list[tuple]]]:
        decl: list[str] = []
        is_decl = False
        assign = (("op", ":="), ("op", "="))
        kinds = [t[0] for t in toks[:4]]
        if allow_two and kinds[:3] == ["var", "op", "var"] and toks[1][1] == "," \
                and len(toks) > 3 and toks[3] in assign:  # {{range $i, $v := ...}}
            decl, is_decl, toks = [toks[0][1], toks[2][1]], toks[3][1] == ":=", toks[4:]
        elif kinds[:1] == ["var"] and len(toks) > 1 and toks[1] in assign:  # $x := ...
            decl, is_decl, toks = [toks[0][1]], toks[1][1] == ":=", toks[2:]
        self._toks, self._i, self._src = toks, 0, src
        cmds = self._commands(closing=False)
        if self._i != len(self._toks):
            raise _perr(f"unexpected {self._toks[self._i][1]!r} in {src!r}")
        if not cmds:
            raise _perr(f"missing value for command in {src!r}")
        return (decl, is_decl, cmds)

    def _commands(self, closing: bool) -> list[list[tuple]]:
        cmds: list[list[tuple]] = []
        cmd: list[tuple] = []
        toks = self._toks
        while self._i < len(toks):
            kind, val = toks[self._i]
            if kind == "op" and val == ")":
                if not closing:
                    raise _perr(f"unexpected ) in {self._src!r}")
                break
            self._i += 1
            if kind == "op" and val == "|":
                if not cmd:
                    raise _perr(f"missing command before | in {self._src!r}")
                cmds.append(cmd)
                cmd = []
                continue
            if kind == "op" and val == "(":
                inner = self._commands(closing=True)
                if self._i >= len(toks) or toks[self._i] != ("op", ")"):
                    raise _perr(f"unclosed ( in {self._src!r}")
                self._i += 1
                names: list[str] = []
                if self._i < len(toks) and toks[self._i][0] == "chain":
                    names = toks[self._i][1].split(".")[1:]
                    self._i += 1
                cmd.append(("pipe", ([], False, inner), names))
                continue
            cmd.append(self._operand(kind, val))
        if cmd:
            cmds.append(cmd)
        elif cmds:
            raise _perr(f"missing command after | in {self._src!r}")
        return cmds

    def _operand(self, kind: str, val: str) -> tuple:
        if kind == "field":
            return ("dot",) if val == "." else ("field", val.split(".")[1:])
        if kind == "var":
            names: list[str] = []
            if self._i < len(self._toks) and self._toks[self._i][0] == "chain":
                names = self._toks[self._i][1].split(".")[1:]
                self._i += 1
            return ("var", val, names)
        if kind in ("str", "char"):
            return ("lit", _unquote(val))
        if kind == "raw":
            return ("lit", val[1:-1])
        if kind == "num":
            try:
                if val.lstrip("+-").lower().startswith("0x"):
                    return ("lit", int(val, 16))
                return ("lit", float(val) if any(c in val for c in ".eE") else int(val))
            except ValueError:
                raise _perr(f"bad number {val}") from None
        if kind == "ident":
            if val in ("true", "false"):
                return ("lit", val == "true")
            if val == "nil":
                return ("lit", None)
            if val not in self.funcs:
                raise TemplateError(f'template parsing error: function "{val}" not defined')
            return ("ident", val)
        raise _perr(f"unexpected {val!r} in {self._src!r}")


# -- execution -----------------------------------------------------------------------------------


class _Exec:
    def __init__(self, funcs: Mapping[str, Callable[..., Any]], root: Any) -> None:
        self.funcs = funcs
        self.vars: list[tuple[str, Any]] = [("$", root)]

    def run(self, nodes: list[tuple], dot: Any, out: list[str]) -> None:
        for node in nodes:
            tag = node[0]
            if tag == "text":
                out.append(node[1])
            elif tag == "action":
                value = self.pipeline(node[1], dot, node[2])
                if not node[1][0]:
                    out.append(go_str(value))
            elif tag == "if":
                mark = len(self.vars)
                cond = self.pipeline(node[1], dot, node[4])
                self.run(node[2] if _truth(cond) else node[3], dot, out)
                del self.vars[mark:]
            elif tag == "with":
                mark = len(self.vars)
                value = self.pipeline(node[1], dot, node[4])
                if _truth(value):
                    self.run(node[2], value, out)
                else:
                    self.run(node[3], dot, out)
                del self.vars[mark:]
            elif tag == "range":
                self._range(node, dot, out)

    def _range(self, node: tuple, dot: Any, out: list[str]) -> None:
        decl, _, cmds = node[1]
        mark = len(self.vars)
        value = self.pipeline(([], False, cmds), dot, node[4])
        if isinstance(value, JSONView):
            value = value.data
        pairs: list[tuple[Any, Any]]
        if value is MISSING or value is None:
            pairs = []
        elif isinstance(value, Mapping):
            pairs = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, (list, tuple)):
            pairs = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            pairs = [(i, i) for i in range(value)]
        else:
            raise TemplateError(
                f"template: executing {{{{{node[4]}}}}}: range can't iterate over {go_str(value)}"
            )
        if not pairs:
            self.run(node[3], dot, out)
            return
        for key, elem in pairs:
            del self.vars[mark:]
            if len(decl) == 2:
                self.vars += [(decl[0], key), (decl[1], elem)]
            elif len(decl) == 1:
                self.vars.append((decl[0], elem))
            self.run(node[2], elem, out)
        del self.vars[mark:]

    def pipeline(self, pipe: tuple, dot: Any, src: str) -> Any:
        decl, is_decl, cmds = pipe
        value: Any = _NOARG
        try:
            for cmd in cmds:
                value = self.command(cmd, dot, value)
        except TemplateError as exc:
            if str(exc).startswith("template"):
                raise
            raise TemplateError(f"template: executing {{{{{src}}}}}: {exc}") from exc
        except Exception as exc:  # a function failed on the data it was given
            raise TemplateError(f"template: executing {{{{{src}}}}}: {exc}") from exc
        if decl:
            if is_decl:
                self.vars.append((decl[-1], value))
            else:
                self._set_var(decl[-1], value, src)
        return value

    def _set_var(self, name: str, value: Any, src: str) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        raise TemplateError(f"template: executing {{{{{src}}}}}: undefined variable: {name}")

    def _var(self, name: str) -> Any:
        for n, v in reversed(self.vars):
            if n == name:
                return v
        raise TemplateError(f"template: undefined variable: {name}")

    def command(self, cmd: list[tuple], dot: Any, final: Any) -> Any:
        first = cmd[0]
        args = cmd[1:]
        if first[0] == "ident":
            values = [self.arg(a, dot) for a in args]
            if final is not _NOARG:
                values.append(final)
            return self.funcs[first[1]](*values)
        extra = [self.arg(a, dot) for a in args]
        if final is not _NOARG:
            extra.append(final)
        tag = first[0]
        if tag == "field":
            return self.chain(dot, first[1], extra)
        if tag == "var":
            return self.chain(self._var(first[1]), first[2], extra)
        if tag == "pipe":
            return self.chain(self.pipeline(first[1], dot, ""), first[2], extra)
        if extra:
            value = go_str(self.arg(first, dot))
            raise TemplateError(f"template: can't give argument to non-function {value}")
        return self.arg(first, dot)

    def arg(self, node: tuple, dot: Any) -> Any:
        tag = node[0]
        if tag == "lit":
            return node[1]
        if tag == "dot":
            return dot
        if tag == "field":
            return self.chain(dot, node[1], [])
        if tag == "var":
            return self.chain(self._var(node[1]), node[2], [])
        if tag == "pipe":
            return self.chain(self.pipeline(node[1], dot, ""), node[2], [])
        if tag == "ident":  # a function used as an argument: call it without arguments
            return self.funcs[node[1]]()
        raise TemplateError(f"template: bad operand {node!r}")

    def chain(self, value: Any, names: list[str], args: list[Any]) -> Any:
        if not names:
            if args:
                value = go_str(value)
                raise TemplateError(f"template: can't give argument to non-function {value}")
            return value
        for i, name in enumerate(names):
            last = i == len(names) - 1
            value = _lookup(value, name)
            if callable(value) and not isinstance(value, type):
                value = value(*args) if last else value()
            elif last and args:
                if isinstance(value, _HeaderText):  # header of a method field: .Label "x"
                    return value
                raise TemplateError(f"template: can't give argument to non-function .{name}")
        return value


def _lookup(obj: Any, name: str) -> Any:
    if obj is MISSING or obj is None:
        return MISSING
    if isinstance(obj, _HeaderView):
        return obj.lookup(name)
    if isinstance(obj, _HeaderText):
        return obj.view.lookup(name)
    if isinstance(obj, JSONView):
        return obj.lookup(name)
    if isinstance(obj, Mapping):
        return obj.get(name, MISSING)
    if isinstance(obj, (str, int, float, bool, list, tuple)) or name.startswith("_"):
        raise TemplateError(f"template: can't evaluate field {name} in type {_go_type(obj)}")
    value = getattr(obj, name, MISSING)
    if value is MISSING:
        raise TemplateError(f"template: can't evaluate field {name} in type {_go_type(obj)}")
    return value


def _go_type(obj: Any) -> str:
    return {str: "string", int: "int", float: "float64", bool: "bool", list: "[]interface {}",
            tuple: "[]interface {}"}.get(type(obj), type(obj).__name__)


class Template:
    """A parsed template. ``render(data)`` executes it; ``render_header()`` executes it on
    the header data (every field is its header: ``headers`` or derived from the name)."""

    def __init__(self, text: str, headers: Mapping[str, str] | None = None) -> None:
        self.text = text
        self.headers = dict(headers or {})
        self.nodes = _Parser(FUNCTIONS).parse(text)

    def render(self, data: Any) -> str:
        out: list[str] = []
        _Exec(FUNCTIONS, data).run(self.nodes, data, out)
        return "".join(out)

    def render_header(self) -> str:
        funcs = dict(FUNCTIONS)
        for name in _HEADER_PASSTHROUGH:
            funcs[name] = lambda v=MISSING, *_rest: v
        view = _HeaderView(self.headers)
        out: list[str] = []
        _Exec(funcs, view).run(self.nodes, view, out)
        return "".join(out)


# -- docker's formatting contexts ----------------------------------------------------------------


def is_table(fmt: str) -> bool:
    return fmt.startswith("table")


def _prepare(fmt: str) -> str:
    """docker's preFormat: drop ``table``, ``json`` → ``{{json .}}``, trim spaces, and turn
    the two characters ``\\t``/``\\n`` into tab/newline."""
    if is_table(fmt):
        fmt = fmt[len("table") :]
    elif fmt.strip() == "json":
        fmt = "{{json .}}"
    return fmt.strip(" ").replace("\\t", "\t").replace("\\n", "\n")


def format_one(fmt: str, data: Any) -> str:
    """Render a single object with ``fmt`` (``inspect -f``, ``version``/``info --format``):
    no header, no trailing newline added; ``json`` means ``{{json .}}``."""
    if fmt.strip() == "json":
        fmt = "{{json .}}"
    return Template(fmt).render(data)


def format_list(
    fmt: str, items: Iterable[Any], headers: Mapping[str, str] | None = None
) -> str:
    """Render ``items`` as docker's list commands do: one rendered line per item; with the
    ``table`` prefix a header row first and the columns aligned. Returns the full text."""
    text = _prepare(fmt)
    tmpl = Template(text, headers)
    rows = [tmpl.render(item) + "\n" for item in items]
    if not is_table(fmt):
        return "".join(rows)
    return tabwrite(tmpl.render_header() + "\n" + "".join(rows))


def tabwrite(text: str, minwidth: int = 10, padding: int = 3) -> str:
    """Align tab-separated cells as Go's ``text/tabwriter`` does with docker's settings
    (``minwidth`` 10, ``padding`` 3, pad with spaces): a cell is terminated by a tab; the last
    cell of a line is not aligned; a column's width is computed over the block of consecutive
    lines that have that column."""
    lines = [line.split("\t") for line in text.split("\n")]
    widths: list[int] = []
    out: list[str] = []

    def write_lines(line0: int, line1: int) -> None:
        for i in range(line0, line1):
            cells = lines[i]
            parts = [
                c.ljust(widths[j]) if j < len(widths) else c for j, c in enumerate(cells)
            ]
            out.append("".join(parts))

    def fmt(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            fmt(line0, this)
            widths.pop()
            line0 = this
        write_lines(line0, line1)

    fmt(0, len(lines))
    return "\n".join(out)


def tabulate(
    rows: Sequence[Sequence[Any]], minwidth: int = 10, padding: int = 3
) -> str:
    """Docker-style table of ``rows`` (the first is the header): cells joined by tabs, aligned
    by ``tabwrite``; every line ends with a newline."""
    text = "".join("\t".join(go_str(c) for c in row) + "\n" for row in rows)
    return tabwrite(text, minwidth, padding)
