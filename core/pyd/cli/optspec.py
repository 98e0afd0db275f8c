"""Command options as data: one table serves click (``to_click``) and the fast path (``parse``).

``pyd run`` and ``pyd exec`` start containers and processes, so their start-up counts; click's
import alone costs about 40 ms there. Their options are declared once, as ``Opt`` rows; the
click commands are built from the rows, and ``parse`` reads a command line the way click's
parser does (long options with ``=`` or a separate value, clustered short flags, ``-eVALUE``,
``--`` and, as these commands set ``allow_interspersed_args=False``, the first positional
argument ends the options). Whatever ``parse`` is not sure of (an unknown option, ``--help``,
a missing value, a bad number, a missing argument) makes it return None, and the command
goes through click, which reports it as before.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs an import on every invocation
if TYPE_CHECKING:
    from typing import Any, Callable, Sequence

# kinds of options
STR, INT, FLAG, MULTI, BOOL = "str", "int", "flag", "multi", "bool"  # BOOL: "--x/--no-x"
_UNSET = object()


class Opt:
    """One option: its declarations as click takes them (``"-e", "--env"``, an explicit
    destination name, or ``"--init/--no-init"`` for a BOOL), its kind and default."""

    __slots__ = ("decls", "kind", "default", "help", "hidden", "metavar", "dest", "opts", "secondary")

    def __init__(self, *decls: str, kind: str = STR, default: Any = _UNSET, help: str | None = None,
                 hidden: bool = False, metavar: str | None = None) -> None:
        self.decls, self.kind, self.help, self.hidden, self.metavar = decls, kind, help, hidden, metavar
        if default is _UNSET:
            default = {STR: "", INT: None, FLAG: False, MULTI: (), BOOL: None}[kind]
        self.default = default
        self.dest, self.opts, self.secondary = _names(decls)

    @property
    def takes_value(self) -> bool:
        return self.kind in (STR, INT, MULTI)


def _names(decls: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """click's ``Option._parse_decls``: (destination, option strings, secondary strings)."""
    name = None
    opts: list[str] = []
    secondary: list[str] = []
    possible: list[tuple[str, str]] = []
    for decl in decls:
        if decl.isidentifier():
            name = decl
            continue
        split = ";" if decl[:1] == "/" else "/"
        if split in decl:
            first, second = decl.split(split, 1)
            first, second = first.rstrip(), second.lstrip()
            if first:
                possible.append(_split_opt(first))
                opts.append(first)
            if second:
                secondary.append(second)
        else:
            possible.append(_split_opt(decl))
            opts.append(decl)
    if name is None:
        possible.sort(key=lambda p: -len(p[0]))  # long options first, as click does
        name = possible[0][1].replace("-", "_").lower()
    return name, opts, secondary


def _split_opt(opt: str) -> tuple[str, str]:
    first = opt[:1]
    if first.isalnum():
        return "", opt
    if opt[1:2] == first:
        return opt[:2], opt[2:]
    return first, opt[1:]


# -- click ------------------------------------------------------------------------------------


def to_click(opt: Opt) -> Callable[[Any], Any]:
    """The ``click.option`` decorator for ``opt``."""
    import click

    kwargs: dict[str, Any] = {}
    if opt.help is not None:
        kwargs["help"] = opt.help
    if opt.hidden:
        kwargs["hidden"] = True
    if opt.metavar is not None:
        kwargs["metavar"] = opt.metavar
    if opt.kind == FLAG:
        return click.option(*opt.decls, is_flag=True, **kwargs)
    if opt.kind == MULTI:
        return click.option(*opt.decls, multiple=True, **kwargs)
    if opt.kind == INT:
        return click.option(*opt.decls, type=int, default=opt.default, **kwargs)
    return click.option(*opt.decls, default=opt.default, **kwargs)  # STR, BOOL


def click_options(table: Sequence[Opt]) -> Callable[[Any], Any]:
    """A decorator adding every option of ``table`` (in its order, for ``--help``)."""

    def decorate(f: Any) -> Any:
        for opt in reversed(table):
            f = to_click(opt)(f)
        return f

    return decorate


# -- the fast parser ------------------------------------------------------------------------------


def parse(table: Sequence[Opt], args: Sequence[str]) -> tuple[dict[str, Any], list[str]] | None:
    """Read ``args`` as click would for a command with ``table``'s options and
    ``allow_interspersed_args=False``: ``({dest: value}, positional arguments)``, or None
    whenever click would fail or do more than parse (``--help``, an unknown option, ...)."""
    by_opt: dict[str, tuple[Opt, Any]] = {}
    for o in table:
        for s in o.opts:
            by_opt[s] = (o, True)
        for s in o.secondary:
            by_opt[s] = (o, False)
    values: dict[str, Any] = {}
    multi: dict[str, list[str]] = {}
    rest = list(args)
    i = 0

    def store(o: Opt, value: Any) -> bool:
        if o.kind == MULTI:
            multi.setdefault(o.dest, []).append(value)
        elif o.kind == INT:
            try:
                values[o.dest] = int(value)
            except ValueError:
                return False
        else:
            values[o.dest] = value
        return True

    while i < len(rest):
        arg = rest[i]
        i += 1
        if arg == "--":
            break
        if arg[:1] != "-" or len(arg) == 1:
            i -= 1  # the first positional argument ends the options
            break
        if arg[:2] == "--":
            name, eq, explicit = arg.partition("=")
            hit = by_opt.get(name)
            if hit is None:
                return None
            o, const = hit
            if o.takes_value:
                if not eq:
                    if i >= len(rest):
                        return None
                    explicit = rest[i]
                    i += 1
                if not store(o, explicit):
                    return None
            elif eq:
                return None  # click: "does not take a value"
            else:
                values[o.dest] = const
            continue
        # a cluster of short options: -it, -dit, -eFOO=bar, -e FOO
        for j in range(1, len(arg)):
            hit = by_opt.get("-" + arg[j])
            if hit is None:
                return None
            o, const = hit
            if not o.takes_value:
                values[o.dest] = const
                continue
            if j + 1 < len(arg):
                value = arg[j + 1 :]
            elif i < len(rest):
                value = rest[i]
                i += 1
            else:
                return None
            if not store(o, value):
                return None
            break
    for o in table:
        if o.kind == MULTI:
            values[o.dest] = tuple(multi.get(o.dest, ()))
        elif o.dest not in values:
            values[o.dest] = o.default
    return values, rest[i:]
