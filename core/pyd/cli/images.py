"""Image commands: ``images``, ``import``, ``load``, ``save``, ``rmi``, ``tag``, ``history``,
``image inspect``, ``image prune`` and ``system df``, with docker's flags and output.

Only the client is imported (never the engine): names are sent as typed and normalised by
the daemon.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any, Iterable

import click

from pyd.cli import common

IMAGES_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
IMAGES_DIGESTS_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
IMAGES_HEADERS = {"ID": "IMAGE ID", "CreatedSince": "CREATED"}
HISTORY_TABLE = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
HISTORY_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedBy": "CREATED BY"}


# -- helpers ---------------------------------------------------------------------------------


def _path(name: str) -> str:
    from pyd.client import quote_path

    return quote_path(name)


def _split_tag(ref: str) -> tuple[str, str]:
    """``repo:tag`` -> (repo, tag); a ``:`` before the last ``/`` is a registry port."""
    if "@" in ref:
        return ref, ""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :]
    return ref, ""


def _human(n: float) -> str:
    """docker's ``units.HumanSize`` (4 significant digits)."""
    return common.human_size(n, 4)


class _ImageRow:
    """One line of ``pyd images``: the fields docker's ``--format`` offers."""

    def __init__(self, summary: dict[str, Any], repo: str, tag: str, digest: str, no_trunc: bool, now: float) -> None:
        self._s, self.Repository, self.Tag, self.Digest = summary, repo, tag, digest
        self._no_trunc, self._now = no_trunc, now

    @property
    def ID(self) -> str:
        return common.short_id(self._s["Id"], self._no_trunc)

    @property
    def CreatedSince(self) -> str:
        return common.time_ago(self._s["Created"], self._now)

    @property
    def CreatedAt(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S %z %Z", time.localtime(self._s["Created"]))

    @property
    def Size(self) -> str:
        return common.human_size(self._s["Size"])

    @property
    def VirtualSize(self) -> str:
        return common.human_size(self._s.get("VirtualSize", self._s["Size"]))

    @property
    def SharedSize(self) -> str:
        shared = self._s.get("SharedSize", -1)
        return "N/A" if shared == -1 else common.human_size(shared)

    @property
    def UniqueSize(self) -> str:
        shared = self._s.get("SharedSize", -1)
        return "N/A" if shared == -1 else common.human_size(self._s["Size"] - shared)

    @property
    def Containers(self) -> str:
        n = self._s.get("Containers", -1)
        return "N/A" if n == -1 else str(n)

    def __json__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "Containers", "CreatedAt", "CreatedSince", "Digest", "ID", "Repository",
            "SharedSize", "Size", "Tag", "UniqueSize", "VirtualSize")}


def _rows(summaries: list[dict[str, Any]], digests: bool, no_trunc: bool) -> list[_ImageRow]:
    """docker's rule: a row per (repository, tag), digests shown per tag with ``--digests``,
    digest-only repositories as ``<none>`` tags, untagged images as ``<none> <none>``."""
    now = time.time()
    out: list[_ImageRow] = []
    for s in summaries:
        tags: dict[str, list[str]] = {}
        dgsts: dict[str, list[str]] = {}
        for ref in s.get("RepoTags") or []:
            if ref == "<none>:<none>":
                continue
            repo, tag = _split_tag(ref)
            tags.setdefault(repo, []).append(tag)
        for ref in s.get("RepoDigests") or []:
            if ref == "<none>@<none>":
                continue
            repo, _, dgst = ref.partition("@")
            dgsts.setdefault(repo, []).append(dgst)
        rows: list[_ImageRow] = []
        for repo in sorted(tags):
            ds = dgsts.pop(repo, [])
            if not digests:
                ds = []  # digest references only show with --digests
            for tag in sorted(tags[repo]):
                for d in ds or ["<none>"]:
                    rows.append(_ImageRow(s, repo, tag, d, no_trunc, now))
        for repo in sorted(dgsts):
            for d in dgsts[repo] if digests else [""]:
                rows.append(_ImageRow(s, repo, "<none>", d, no_trunc, now))
        out += rows or [_ImageRow(s, "<none>", "<none>", "<none>", no_trunc, now)]
    return out


_interactive = common.isatty


class _UploadProgress:
    """Wraps an upload file; on a terminal, shows ``NAME [=====>   ] 12.3MB/100MB`` on stderr."""

    def __init__(self, f: IO[bytes], label: str, total: int | None, show: bool) -> None:
        self._f, self._label, self._total, self._show = f, label, total, show
        self._sent, self._last = 0, 0.0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n if n and n > 0 else 1 << 16)
        self._sent += len(data)
        if self._show:
            now = time.monotonic()
            if not data or now - self._last > 0.1:
                self._last = now
                sys.stderr.write("\r" + _bar(self._label, self._sent, self._total))
                if not data:
                    sys.stderr.write("\n")
                sys.stderr.flush()
        return data


def _bar(label: str, current: int, total: int | None, width: int = 50) -> str:
    if total:
        filled = min(width, int(width * current / total))
        arrow = "=" * max(filled - 1, 0) + (">" if filled else "")
        return f"{label} [{arrow.ljust(width)}] {_human(current)}/{_human(total)}\x1b[K"
    return f"{label} {_human(current)}\x1b[K"


def _show_stream(messages: Iterable[dict[str, Any]], tty: bool) -> None:
    """Print a JSON progress stream: on a terminal, progress bars redraw in place."""
    if not tty:
        common.print_progress(messages)
        return
    on_bar = False
    for msg in messages:
        if msg.get("errorDetail") or msg.get("error"):
            if on_bar:
                common.write("\n")
            common.print_progress([msg])  # raises
        detail = msg.get("progressDetail") or {}
        if detail.get("total"):
            label = f"{msg['id']}: {msg.get('status', '')}" if msg.get("id") else msg.get("status", "")
            common.write("\r" + _bar(label, int(detail.get("current", 0)), int(detail["total"])))
            on_bar = True
            continue
        if on_bar:
            common.write("\n")
            on_bar = False
        common.print_progress([msg])
    if on_bar:
        common.write("\n")


def _stdin_bytes() -> IO[bytes]:
    return sys.stdin.buffer


# -- images / image ls ---------------------------------------------------------------------------


@click.command("images")
@click.argument("reference", required=False)
@click.option("-a", "--all", "all_", is_flag=True, help="Show all images (default hides intermediate images).")
@click.option("--digests", is_flag=True, help="Show digests.")
@common.filter_option
@common.format_option
@common.no_trunc_option
@common.quiet_option
def images(reference: str | None, all_: bool, digests: bool, filters: tuple[str, ...],
           format_: str | None, no_trunc: bool, quiet: bool) -> None:
    """List images ([REPOSITORY[:TAG]] narrows the list)."""
    parsed = common.parse_filters(filters) or {}
    if reference:
        parsed.setdefault("reference", {})[reference] = True
    params: dict[str, Any] = {"all": all_ or None}
    if parsed:
        params["filters"] = parsed
    summaries = common.get_client().get("/images/json", params=params)
    rows = _rows(summaries, digests, no_trunc)
    common.print_list(rows, format_, default=IMAGES_DIGESTS_TABLE if digests else IMAGES_TABLE,
                      headers=IMAGES_HEADERS, quiet=quiet)


# -- import / load / save ------------------------------------------------------------------------


@click.command("import")
@click.argument("source")
@click.argument("repository", required=False)
@click.option("-c", "--change", "changes", multiple=True, metavar="LIST",
              help="Apply a Dockerfile instruction to the created image; repeatable.")
@click.option("-m", "--message", default="", help="Set the commit message for the imported image.")
def import_(source: str, repository: str | None, changes: tuple[str, ...], message: str) -> None:
    """Import the contents of a tarball (FILE, or - for stdin) to create an image."""
    params: dict[str, Any] = {"fromSrc": "-", "repo": repository or None, "message": message or None,
                              "changes": list(changes) or None}
    tty = _interactive(sys.stderr)
    if source == "-":
        body: Any = _UploadProgress(_stdin_bytes(), "Importing", None, tty)
        f = None
    else:
        try:
            f = open(source, "rb")
        except OSError as exc:
            raise click.ClickException(f"open {source}: {exc.strerror.lower() if exc.strerror else exc}") from None
        body = _UploadProgress(f, "Importing", os.fstat(f.fileno()).st_size, tty)
    try:
        resp = common.get_client().stream("POST", "/images/create", params=params, body=body,
                                          headers={"Content-Type": "text/plain"})
        with resp:
            for msg in resp.iter_json():
                if msg.get("errorDetail") or msg.get("error"):
                    common.print_progress([msg])
                if msg.get("status"):
                    common.write(str(msg["status"]) + "\n")
    finally:
        if f is not None:
            f.close()


@click.command("load")
@click.option("-i", "--input", "input_", metavar="FILE", help="Read from tar archive file, instead of STDIN.")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the load output.")
def load(input_: str | None, quiet: bool) -> None:
    """Load images from a tar archive (docker save's format) or STDIN."""
    if input_ is None and _interactive(sys.stdin):
        raise click.ClickException("requested load from stdin, but stdin is empty")
    tty = _interactive(sys.stdout)
    f = open(input_, "rb") if input_ else None
    try:
        total = os.fstat(f.fileno()).st_size if f else None
        body = _UploadProgress(f or _stdin_bytes(), "Uploading", total, False)
        resp = common.get_client().stream(
            "POST", "/images/load", params={"quiet": not (tty and not quiet)}, body=body,
            headers={"Content-Type": "application/x-tar"},
        )
        with resp:
            messages = resp.iter_json()
            if quiet:
                for msg in messages:
                    if msg.get("errorDetail") or msg.get("error"):
                        common.print_progress([msg])
            else:
                _show_stream(messages, tty)
    finally:
        if f is not None:
            f.close()


@click.command("save")
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--output", metavar="FILE", help="Write to a file, instead of STDOUT.")
def save(images: tuple[str, ...], output: str | None) -> None:
    """Save one or more images to a tar archive (streamed to STDOUT by default)."""
    common.save_stream("/images/get", "GET", {"names": list(images)}, output)


# -- rmi / tag / history / inspect / prune ----------------------------------------------------------


@click.command("rmi")
@click.argument("images", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Force removal of the image.")
@click.option("--no-prune", is_flag=True, help="Do not delete untagged parents.")
@click.pass_context
def rmi(ctx: click.Context, images: tuple[str, ...], force: bool, no_prune: bool) -> None:
    """Remove one or more images."""
    client = common.get_client()
    failed = False
    for name in images:
        try:
            records = client.delete(f"/images/{_path(name)}",
                                    params={"force": force or None, "noprune": no_prune or None})
        except Exception as exc:  # noqa: BLE001 - reported per image, as docker does
            if not common.is_daemon_error(exc):
                raise
            common.warn(f"Error response from daemon: {exc}")
            failed = True
            continue
        for rec in records or []:
            for key, value in rec.items():
                common.write(f"{key}: {value}\n")
    if failed:
        ctx.exit(1)


@click.command("tag")
@click.argument("source")
@click.argument("target")
def tag(source: str, target: str) -> None:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    repo, tag_ = _split_tag(target)
    common.get_client().request("POST", f"/images/{_path(source)}/tag",
                                params={"repo": repo, "tag": tag_ or None})


class _HistoryRow:
    def __init__(self, item: dict[str, Any], human: bool, no_trunc: bool, now: float) -> None:
        self._i, self._human, self._no_trunc, self._now = item, human, no_trunc, now

    @property
    def ID(self) -> str:
        ident = self._i.get("Id", "<missing>")
        return ident if ident == "<missing>" else common.short_id(ident, self._no_trunc)

    @property
    def CreatedSince(self) -> str:
        created = self._i.get("Created", 0)
        if not self._human:
            return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(created))
        return common.time_ago(created, self._now)

    @property
    def CreatedAt(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self._i.get("Created", 0)))

    @property
    def CreatedBy(self) -> str:
        text = (self._i.get("CreatedBy") or "").replace("\t", " ")
        if not self._no_trunc and len(text) > 45:
            text = text[:44] + "…"
        return text

    @property
    def Size(self) -> str:
        size = self._i.get("Size", 0)
        return common.human_size(size) if self._human else str(size)

    @property
    def Comment(self) -> str:
        return self._i.get("Comment", "")

    def __json__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("Comment", "CreatedAt", "CreatedBy", "CreatedSince", "ID", "Size")}


@click.command("history")
@click.argument("image")
@click.option("-H", "--human", type=bool, default=True, show_default=True,
              help="Print sizes and dates in human readable format.")
@common.format_option
@common.no_trunc_option
@common.quiet_option
def history(image: str, human: bool, format_: str | None, no_trunc: bool, quiet: bool) -> None:
    """Show the history of an image."""
    items = common.get_client().get(f"/images/{_path(image)}/history")
    now = time.time()
    rows = [_HistoryRow(i, human, no_trunc, now) for i in items]
    common.print_list(rows, format_, default=HISTORY_TABLE, headers=HISTORY_HEADERS, quiet=quiet)


@click.command("inspect")
@click.argument("images", nargs=-1, required=True)
@click.option("-f", "--format", "format_", metavar="FORMAT", help="Format output using a Go template.")
def inspect(images: tuple[str, ...], format_: str | None) -> None:
    """Display detailed information on one or more images."""
    client = common.get_client()
    common.inspect_objects(images, lambda name: client.get(f"/images/{_path(name)}/json"), "image", format_)


_PRUNE_WARNING = "WARNING! This will remove all dangling images."
_PRUNE_ALL_WARNING = "WARNING! This will remove all images without at least one container associated to them."


@click.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove all unused images, not just dangling ones.")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.option("--filter", "filters", multiple=True, metavar="FILTER",
              help="Provide filter values (e.g. 'until=<timestamp>', 'label=k=v'); repeatable.")
def prune(all_: bool, force: bool, filters: tuple[str, ...]) -> None:
    """Remove unused images."""
    common.prune_objects(
        "/images/prune", filters, force=force,
        warning=_PRUNE_ALL_WARNING if all_ else _PRUNE_WARNING,
        extra_filters={"dangling": {"false": True}} if all_ else None,
        deleted_key="ImagesDeleted", heading="Deleted Images",
        entry_lines=lambda rec: [f"{key.lower()}: {value}" for key, value in rec.items()],
    )


# -- system df --------------------------------------------------------------------------------------


def _percent(part: int, total: int) -> str:
    return f"{_human(part)} ({part * 100 // total}%)" if total > 0 else _human(part)


@click.command("df")
@click.option("-v", "--verbose", is_flag=True, help="Show detailed information on space usage.")
@common.format_option
def system_df(verbose: bool, format_: str | None) -> None:
    """Show pyd disk usage."""
    df = common.get_client().get("/system/df")
    images_ = df.get("Images") or []
    containers = df.get("Containers") or []
    volumes = df.get("Volumes") or []
    layers = int(df.get("LayersSize") or 0)
    used = sum(i["Size"] - i.get("SharedSize", 0) for i in images_ if i.get("Containers", 0) > 0
               and i.get("SharedSize", -1) != -1)
    c_size = sum(int(c.get("SizeRw") or 0) for c in containers)
    c_free = sum(int(c.get("SizeRw") or 0) for c in containers if c.get("State") != "running")
    v_sizes = [int((v.get("UsageData") or {}).get("Size") or 0) for v in volumes]
    v_free = sum(int((v.get("UsageData") or {}).get("Size") or 0) for v in volumes
                 if (v.get("UsageData") or {}).get("RefCount", 0) == 0)
    summary = [
        {"Type": "Images", "TotalCount": str(len(images_)),
         "Active": str(sum(1 for i in images_ if i.get("Containers", 0) > 0)),
         "Size": _human(layers), "Reclaimable": _percent(layers - used, layers)},
        {"Type": "Containers", "TotalCount": str(len(containers)),
         "Active": str(sum(1 for c in containers if c.get("State") == "running")),
         "Size": _human(c_size), "Reclaimable": _percent(c_free, c_size)},
        {"Type": "Local Volumes", "TotalCount": str(len(volumes)),
         "Active": str(sum(1 for v in volumes if (v.get("UsageData") or {}).get("RefCount", 0) > 0)),
         "Size": _human(sum(v_sizes)), "Reclaimable": _percent(v_free, sum(v_sizes))},
        {"Type": "Build Cache", "TotalCount": "0", "Active": "0",
         "Size": _human(int(df.get("BuilderSize") or 0)), "Reclaimable": _human(0)},
    ]
    if not verbose:
        common.print_list(summary, format_,
                          default="table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}",
                          headers={"TotalCount": "TOTAL"})
        return
    common.write("Images space usage:\n\n")
    rows = _rows(images_, False, False)
    common.print_list(rows, None, default="table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t"
                      "{{.Size}}\t{{.SharedSize}}\t{{.UniqueSize}}\t{{.Containers}}", headers=IMAGES_HEADERS)
    common.write("\nContainers space usage:\n\n")
    common.print_table(
        [[common.short_id(c.get("Id", "")), c.get("Image", ""), json.dumps(c.get("Command", "")),
          c.get("LocalVolumes", 0), _human(int(c.get("SizeRw") or 0)),
          common.time_ago(c.get("Created", 0)), c.get("Status", ""), ",".join(n.lstrip("/") for n in c.get("Names") or [])]
         for c in containers],
        ["CONTAINER ID", "IMAGE", "COMMAND", "LOCAL VOLUMES", "SIZE", "CREATED", "STATUS", "NAMES"],
    )
    common.write("\nLocal Volumes space usage:\n\n")
    common.print_table(
        [[v.get("Name", ""), (v.get("UsageData") or {}).get("RefCount", 0), _human(s)] for v, s in zip(volumes, v_sizes)],
        ["VOLUME NAME", "LINKS", "SIZE"],
    )
    common.write("\nBuild cache usage: 0B\n")

