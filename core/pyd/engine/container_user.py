"""Resolve ``--user`` (``name|uid[:group|gid]``) against the container's /etc/passwd and /etc/group.

Docker's rules (libcontainer's ``GetExecUser``): a numeric uid need not exist in passwd (it
then gets gid 0 and home ``/``); a name must. A group given after ``:`` replaces the primary
group; supplementary groups are those in /etc/group that list the user's name, plus
``--group-add``. The files are read with in-root path resolution (``rootfs_path``), so a
symlinked /etc/passwd cannot make the daemon read a host file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyd.engine.rootfs_path import read_in_root
from pyd.errors import InvalidParameter
from pyd.types import User


@dataclass
class ExecUser:
    user: User
    home: str = "/"
    name: str = ""


@dataclass
class _Passwd:
    name: str
    uid: int
    gid: int
    home: str


@dataclass
class _Group:
    name: str
    gid: int
    members: list[str] = field(default_factory=list)


def _parse_passwd(data: bytes | None) -> list[_Passwd]:
    out = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        parts = line.strip().split(":")
        if len(parts) < 4 or line.startswith("#"):
            continue
        try:
            out.append(_Passwd(parts[0], int(parts[2]), int(parts[3]), parts[5] if len(parts) > 5 else "/"))
        except ValueError:
            continue
    return out


def _parse_group(data: bytes | None) -> list[_Group]:
    out = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        parts = line.strip().split(":")
        if len(parts) < 3 or line.startswith("#"):
            continue
        try:
            members = [m for m in parts[3].split(",") if m] if len(parts) > 3 else []
            out.append(_Group(parts[0], int(parts[2]), members))
        except ValueError:
            continue
    return out


def _is_int(s: str) -> bool:
    return s.isdigit()


def resolve_user(spec: str, passwd: bytes | None, group: bytes | None, group_add: list[str] | None = None) -> ExecUser:
    """Pure resolution from the files' contents (None: the file does not exist)."""
    spec = spec or ""
    user_part, _, group_part = spec.partition(":")
    users = _parse_passwd(passwd)
    groups = _parse_group(group)

    entry: _Passwd | None = None
    if user_part == "":
        entry = next((u for u in users if u.uid == 0), None)
        uid, gid, home, name = 0, 0, "/", "root"
        if entry:
            uid, gid, home, name = entry.uid, entry.gid, entry.home, entry.name
    elif _is_int(user_part):
        uid = int(user_part)
        entry = next((u for u in users if u.uid == uid), None)
        gid, home, name = (entry.gid, entry.home, entry.name) if entry else (0, "/", "")
    else:
        entry = next((u for u in users if u.name == user_part), None)
        if entry is None:
            raise InvalidParameter(
                f"unable to find user {user_part}: no matching entries in passwd file"
            )
        uid, gid, home, name = entry.uid, entry.gid, entry.home, entry.name
    if uid < 0 or uid > 2**31 - 2:
        raise InvalidParameter(f"invalid --user {spec!r}: uids and gids must be in range 0-2147483646")

    if group_part:
        gid = _lookup_group(group_part, groups)

    extra: list[int] = []
    if name and not group_part:
        extra = [g.gid for g in groups if name in g.members]
    for g in group_add or []:
        extra.append(_lookup_group(g, groups))
    seen: set[int] = set()
    additional = [g for g in extra if not (g in seen or seen.add(g))]  # keep order, drop dups
    return ExecUser(User(uid=uid, gid=gid, additional_gids=additional), home or "/", name)


def _lookup_group(spec: str, groups: list[_Group]) -> int:
    if _is_int(spec):
        return int(spec)
    for g in groups:
        if g.name == spec:
            return g.gid
    raise InvalidParameter(f"unable to find group {spec}: no matching entries in group file")


def resolve_user_in_rootfs(rootfs: str, spec: str, group_add: list[str] | None = None) -> ExecUser:
    """Resolve ``spec`` against ``<rootfs>/etc/passwd`` and ``/etc/group``, never leaving ``rootfs``."""
    passwd = read_in_root(rootfs, "/etc/passwd")
    group = read_in_root(rootfs, "/etc/group")
    return resolve_user(spec, passwd, group, group_add)
