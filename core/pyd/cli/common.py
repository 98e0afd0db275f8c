"""Helpers shared by the CLI's commands: the client, output, filters, sizes, times, IDs.

A command module uses them like this::

    import click
    from pyd.cli import common

    @click.command("ps")
    @common.filter_option
    @common.format_option
    @common.quiet_option
    def ps(filters, format_, quiet):
        client = common.get_client()
        rows = client.get("/containers/json", params={"filters": common.parse_filters(filters)})
        common.print_list([row_context(r) for r in rows], format_, default=DEFAULT, quiet=quiet,
                          headers={"ID": "CONTAINER ID", "RunningFor": "CREATED"})

Keep module-level imports here cheap (this module loads for every command): the client,
``pyd.format`` and ``datetime`` are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import click

if TYPE_CHECKING:
    from pyd.client import Client

# -- global state and the client -----------------------------------------------------------------

# CliState and the output helpers live in the click-free pyd.cli.state (the fast path of
# ``run``/``exec`` uses them without importing click); re-exported here for the commands.
from pyd.cli.state import CliState, is_daemon_error, warn, write  # noqa: E402,F401


def get_state(ctx: click.Context | None = None) -> CliState:
    ctx = ctx or click.get_current_context()
    state = ctx.find_object(CliState)
    if state is None:  # a command invoked outside the pyd group (tests)
        state = ctx.ensure_object(CliState)
    return state


def get_client(ctx: click.Context | None = None) -> Client:
    """The client for this invocation (from ``-H``/``PYD_HOST`` and the TLS options)."""
    return get_state(ctx).client()


# -- options -------------------------------------------------------------------------------------

format_option = click.option(
    "--format",
    "format_",
    metavar="FORMAT",
    default=None,
    help="Format output using a custom template: 'table', 'table TEMPLATE' (with headers), "
    "'json', or a Go template such as '{{.ID}}'.",
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Only display IDs.")
filter_option = click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="FILTER",
    help="Filter output based on conditions provided (KEY=VALUE); repeatable.",
)
no_trunc_option = click.option("--no-trunc", is_flag=True, help="Don't truncate output.")


# -- output --------------------------------------------------------------------------------------


def print_list(
    items: Iterable[Any],
    format_: str | None,
    *,
    default: str,
    headers: Mapping[str, str] | None = None,
    quiet: bool = False,
    quiet_format: str = "{{.ID}}",
) -> None:
    """Print ``items`` as docker's list commands do.

    ``format_`` is the user's ``--format`` (None/'' → ``default``, a ``table ...`` template;
    ``table`` alone → ``default``). ``-q`` prints ``quiet_format`` unless a custom format
    was given. ``headers`` maps field names to header text where it differs from the derived
    one (``{"ID": "CONTAINER ID", "RunningFor": "CREATED"}``).
    """
    from pyd.format import format_list

    fmt = format_ or ""
    if quiet and fmt in ("", "table"):
        fmt = quiet_format
    elif fmt in ("", "table"):
        fmt = default
    write(format_list(fmt, items, headers))


def print_one(format_: str, data: Any) -> None:
    """Print one object with a user's ``--format`` (``inspect -f``, ``version --format``),
    followed by a newline as docker does."""
    from pyd.format import format_one

    write(format_one(format_, data) + "\n")


def print_table(rows: Iterable[Iterable[Any]], headers: Iterable[str]) -> None:
    """Print a plain docker-style table (header row first)."""
    from pyd.format import tabulate

    write(tabulate([list(headers), *[list(r) for r in rows]]))


# -- filters -------------------------------------------------------------------------------------


def parse_filters(values: Iterable[str]) -> dict[str, dict[str, bool]] | None:
    """``("label=a=b", "status=running", "status=exited")`` → Docker's filters JSON as the CLI
    sends it, ``{"label": {"a=b": True}, "status": {"running": True, "exited": True}}``;
    None when there are none (so no ``filters`` parameter is sent)."""
    from pyd.errors import InvalidParameter

    out: dict[str, dict[str, bool]] = {}
    for value in values:
        key, sep, val = value.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidParameter(f'bad format of filter "{value}" (expected name=value)')
        out.setdefault(key.lower(), {})[val] = True
    return out or None


# -- sizes, times, IDs -----------------------------------------------------------------------

_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def _custom_size(size: float, base: float, units: tuple[str, ...], precision: int) -> str:
    i = 0
    while size >= base and i < len(units) - 1:
        size /= base
        i += 1
    return f"{size:.{precision}g}{units[i]}"


def human_size(size: float, precision: int = 3) -> str:
    """docker's ``HumanSizeWithPrecision`` (decimal units): 1982417 → ``1.98MB``.

    docker uses precision 3 in ``images``/``ps -s``/``system df`` and 4 (``HumanSize``)
    elsewhere."""
    return _custom_size(float(size), 1000.0, _DECIMAL_UNITS, precision)


def bytes_size(size: float) -> str:
    """docker's ``BytesSize`` (binary units, 4 significant digits): ``23.54GiB``."""
    return _custom_size(float(size), 1024.0, _BINARY_UNITS, 4)


from pyd.units import human_duration  # noqa: E402  (re-exported)


def time_ago(timestamp: float, now: float | None = None) -> str:
    """``2 hours ago`` for a Unix timestamp (docker's CREATED column)."""
    now = time.time() if now is None else now
    return human_duration(now - timestamp) + " ago"


def short_id(object_id: str, no_trunc: bool = False) -> str:
    """docker's ``TruncateID``: drop an algorithm prefix (``sha256:``), keep 12 characters."""
    if no_trunc:
        return object_id
    _, sep, rest = object_id.partition(":")
    return (rest if sep else object_id)[:12]


def local_time(seconds: int, nanos: int = 0) -> str:
    """RFC 3339 with nanoseconds in local time, as docker prints event times:
    ``2026-11-28T06:59:48.500237729Z`` (``Z`` when local time is UTC, else ``+01:00``)."""
    tm = time.localtime(seconds)
    offset = tm.tm_gmtoff or 0
    if offset == 0:
        zone = "Z"
    else:
        sign = "+" if offset > 0 else "-"
        zone = f"{sign}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}"
    return time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f".{nanos:09d}{zone}"


_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}


def parse_go_duration(value: str) -> float | None:
    """Seconds of a Go duration (``10m``, ``1h30m``, ``1.5h``, ``300ms``), or None."""
    import re

    if value in ("0", "+0", "-0"):
        return 0.0
    m = re.fullmatch(r"([-+]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+", value)
    if not m:
        return None
    total = sum(
        float(num) * _DURATION_UNITS[unit]
        for num, unit in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", value)
    )
    return -total if m.group(1) == "-" else total


def parse_timestamp(value: str, now: float | None = None) -> str:
    """docker's ``GetTimestamp`` for ``--since``/``--until``: a Go duration (relative to now),
    an RFC 3339 date or date-time (local time unless it has a zone), or Unix seconds
    (``1795850059`` or ``1795850059.000000001``). Returns ``SECONDS[.NANOS]`` for the API."""
    from pyd.errors import InvalidParameter

    value = value.strip()
    now = time.time() if now is None else now
    dur = parse_go_duration(value)
    if dur is not None and value != "0":
        return str(int(now - dur))
    if "-" in value:
        import datetime as dt

        text = value.replace("z", "Z")
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidParameter(
                f'cannot parse "{value}" as a time: use a Unix timestamp, a date such as '
                f"2026-01-02 or 2026-01-02T15:04:05Z, or a duration such as 10m"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.astimezone()  # local time, as docker parses zone-less dates
        frac = text.rpartition(".")[2] if "." in text else ""
        digits = "".join(c for c in frac if c.isdigit())[:9]
        nanos = int(digits.ljust(9, "0")) if digits else parsed.microsecond * 1000
        return f"{int(parsed.replace(microsecond=0).timestamp())}.{nanos:09d}"
    sec, _, frac = value.partition(".")
    if sec.isdigit() and (not frac or frac.isdigit()):
        return value
    raise InvalidParameter(f'failed to parse value as time or duration: "{value}"')


# -- JSON progress streams -------------------------------------------------------------------


def print_progress(messages: Iterable[Mapping[str, Any]]) -> list[Any]:
    """Print a JSON message stream (load, import, pull, push, build) as docker does without a
    TTY: ``stream`` text as is, ``status`` lines as ``ID: status``; an ``error``/``errorDetail``
    message raises it as a daemon error. Returns the ``aux`` payloads (e.g. image IDs)."""
    aux: list[Any] = []
    for msg in messages:
        if msg.get("errorDetail") or msg.get("error"):
            from pyd.errors import PydError

            detail = msg.get("errorDetail") or {}
            err = PydError(detail.get("message") or msg.get("error") or "unknown error")
            err.http_status = 500  # type: ignore[attr-defined]
            raise err
        if "aux" in msg:
            aux.append(msg["aux"])
        if "stream" in msg:
            write(str(msg["stream"]))
        elif msg.get("status"):
            prefix = f"{msg['id']}: " if msg.get("id") else ""
            write(f"{prefix}{msg['status']}\n")
    return aux


# -- inspect and prune of named objects (images, networks, volumes) -------------------------------


def inspect_objects(
    names: Iterable[str], fetch: Callable[[str], Any], kind: str, format_: str | None
) -> None:
    """docker's ``<object> inspect``: ``fetch`` each name (``NotFound`` marks it missing), print
    what was found as one indented JSON array (or each document with ``--format``), then name
    each missing one on stderr (``Error: No such <kind>: NAME``) and exit 1 if any was."""
    import json

    from pyd.errors import NotFound

    found: list[Any] = []
    missing: list[str] = []
    for name in names:
        try:
            found.append(fetch(name))
        except NotFound:
            missing.append(name)
    if format_:
        for doc in found:
            print_one(format_, doc)
    else:
        write(json.dumps(found, indent=4, ensure_ascii=False) + "\n")
    for name in missing:
        warn(f"Error: No such {kind}: {name}")
    if missing:
        click.get_current_context().exit(1)


def prune_objects(
    path: str,
    filters: Iterable[str],
    *,
    force: bool,
    warning: str,
    deleted_key: str,
    heading: str,
    extra_filters: Mapping[str, dict[str, bool]] | None = None,
    entry_lines: Callable[[Any], Iterable[str]] = lambda entry: [str(entry)],
    reclaimed: bool = True,
) -> None:
    """docker's ``<object> prune``: unless ``force``, print ``warning`` and ask (anything but
    ``y``/``yes`` on stdin ends it quietly); POST ``path`` with the ``--filter`` values (plus
    ``extra_filters``, which replace a key); list the report's ``deleted_key`` entries under
    ``heading`` (``entry_lines`` turns one into its lines), then, if ``reclaimed``, the
    ``Total reclaimed space`` line (networks have none)."""
    if not force:
        write(warning + "\nAre you sure you want to continue? [y/N] ")
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return
    parsed = parse_filters(filters) or {}
    parsed.update(extra_filters or {})
    report = get_client().post(path, params={"filters": parsed or None})
    deleted = report.get(deleted_key) or []
    if deleted:
        write(f"{heading}:\n" + "".join(f"{line}\n" for entry in deleted for line in entry_lines(entry)) + "\n")
    if reclaimed:
        write(f"Total reclaimed space: {human_size(report.get('SpaceReclaimed') or 0, 4)}\n")


def isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def save_stream(path: str, method: str, params: Mapping[str, Any] | None, output: str | None) -> None:
    """Stream a tar archive from the daemon to ``output`` (a file) or to STDOUT.

    Refuses a terminal, as Docker does. A file is written to a temp name and renamed at the
    end, so an interrupted transfer leaves no partial archive.
    """
    if output is None and isatty(sys.stdout):
        raise click.ClickException("cowardly refusing to save to a terminal. Use the -o flag or redirect")
    resp = get_client().stream(method, path, params=dict(params) if params else None)
    with resp:
        if output is None:
            out = sys.stdout.buffer
            for chunk in resp.iter_raw():
                out.write(chunk)
            out.flush()
            return
        target = os.path.abspath(output)
        tmp = f"{target}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                for chunk in resp.iter_raw():
                    f.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
