"""A container's mount plan: ``Binds``, ``Mounts``, ``VolumesFrom`` and the image's (and the
request's) ``Config.Volumes`` turned into mount points, with Docker's rules and messages.

Pure functions (no I/O), so they are unit-tested directly. The plan is made once, at create
(``plan_mounts``), and kept in the container's record (``Pyd.MountPoints``); the volume side
(creating, mounting, copy-up) is ``pyd.engine.container_volumes``.

Docker's rules, from moby's ``volume/mounts`` parser and ``daemon.registerMountPoints``:

* ``-v`` strings (``Binds``): ``DEST`` (an anonymous volume), ``SRC:DEST`` or ``SRC:DEST:MODE``;
  an absolute ``SRC`` is a host path (created at start when missing), anything else a volume
  name. ``MODE`` is a comma list with at most one of each: ``ro``/``rw``, ``z``/``Z`` (accepted,
  no SELinux here), a propagation (binds only), ``nocopy`` (volumes only).
* ``Mounts`` (``--mount``): typed entries; a bind's source must be absolute and must exist.
* ``VolumesFrom``: ``CTR[:ro|rw]`` takes every mount point of ``CTR``, with its mode unless
  overridden; a bind or ``--mount`` on the same destination replaces it.
* Two binds/mounts on one destination: ``Duplicate mount point``.
* ``Config.Volumes`` (image ``VOLUME``, ``-v /path``): an anonymous volume unless something is
  already mounted there.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping

from pyd.engine.store import validate_name
from pyd.errors import InvalidParameter

PROPAGATION_MODES = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
DEFAULT_PROPAGATION = "rprivate"
_RW_MODES = ("ro", "rw")
_LABEL_MODES = ("z", "Z")
_COPY_MODES = ("nocopy",)
_CONSISTENCY_MODES = ("consistent", "cached", "delegated")
MOUNT_TYPES = ("bind", "volume", "tmpfs")


@dataclass
class MountPoint:
    """One mount of a container, as moby's ``MountPoint`` (kept in the container's record)."""

    type: str  # bind | volume | tmpfs
    destination: str
    source: str = ""  # bind: the host path; volume: the volume's host path (known after create)
    name: str = ""  # volume: its name ("" until an anonymous one is created)
    driver: str = ""  # volume: its driver ("" = the existing volume's, else local)
    rw: bool = True
    mode: str = ""  # Docker's Mode: the MODE of a -v string ("ro", "z", "ro,nocopy")
    propagation: str = ""  # bind: rprivate unless given
    copy_data: bool = True  # volume: fill a new empty volume from the image (no "nocopy")
    driver_options: dict[str, str] = field(default_factory=dict)  # --mount volume-opt=
    labels: dict[str, str] = field(default_factory=dict)  # --mount volume-label=
    tmpfs_options: str = ""  # tmpfs: "size=64m,mode=1770"
    create_source: bool = False  # -v bind: a missing host directory is made at start
    origin: str = ""  # binds | mounts | volumes-from | image

    @property
    def anonymous(self) -> bool:
        return self.type == "volume" and not self.name

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> MountPoint:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})

    def view(self) -> dict[str, Any]:
        """Docker's ``MountPoint`` of inspect and ``ps`` (``Name``/``Driver`` for volumes only)."""
        out: dict[str, Any] = {"Type": self.type}
        if self.type == "volume":
            out["Name"] = self.name
        out["Source"] = self.source
        out["Destination"] = self.destination
        if self.type == "volume":
            out["Driver"] = self.driver
        out.update({"Mode": self.mode, "RW": self.rw, "Propagation": self.propagation})
        return out


# -- helpers ------------------------------------------------------------------------------------


def _config_error(mtype: str, why: str) -> InvalidParameter:
    return InvalidParameter(f'invalid mount config for type "{mtype}": {why}')


def _abs(path: str) -> str | None:
    """The reason ``path`` is not an absolute path, or None."""
    if not posixpath.isabs(path):
        return f"invalid mount path: '{path}' mount path must be absolute"
    return None


def clean_destination(path: str) -> str:
    return posixpath.normpath(path) if path.startswith("/") else path


def valid_mode(mode: str) -> bool:
    """moby's ``linuxValidMountMode``: known words, at most one of each kind."""
    if not mode:
        return True
    counts = [0, 0, 0, 0, 0]
    for word in mode.split(","):
        for i, kind in enumerate((_RW_MODES, _LABEL_MODES, PROPAGATION_MODES, _COPY_MODES, _CONSISTENCY_MODES)):
            if word in kind:
                counts[i] += 1
                break
        else:
            return False
    return all(n <= 1 for n in counts)


def _mode_words(mode: str) -> list[str]:
    return [w for w in mode.split(",") if w] if mode else []


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _opt_dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidParameter(f"invalid mount config: {what} must be an object, got {value!r}")
    return dict(value)


def _str_map(value: Any, what: str) -> dict[str, str]:
    out = {}
    for k, v in _opt_dict(value, what).items():
        if not isinstance(k, str) or not isinstance(v, (str, type(None))):
            raise InvalidParameter(f"invalid mount config: {what} must map strings to strings, got {k!r}={v!r}")
        out[k] = v or ""
    return out


# -- Binds (-v) -----------------------------------------------------------------------------------


def parse_bind_spec(raw: str, volume_driver: str = "") -> MountPoint:
    """One ``HostConfig.Binds`` string (moby's ``ParseMountRaw``)."""
    if not isinstance(raw, str):
        raise InvalidParameter(f"invalid volume specification: {raw!r}")
    invalid = InvalidParameter(f"invalid volume specification: '{raw}'")
    if raw.count(":") > 2:
        raise invalid
    parts = raw.split(":")
    if not parts[0]:
        raise invalid
    source, mode = "", ""
    if len(parts) == 1:
        target = parts[0]
    elif len(parts) == 2:
        if valid_mode(parts[1]):  # "/foo:rw": a destination with a mode but no source
            raise invalid
        source, target = parts
    else:
        source, target, mode = parts
    if not target:
        raise invalid
    if not valid_mode(mode):
        raise InvalidParameter(f"invalid mode: {mode}")
    words = _mode_words(mode)
    mtype = "bind" if posixpath.isabs(source) else "volume"
    prefix = f"invalid volume specification: '{raw}': "
    try:
        _check_target(mtype, target)
        if mtype == "bind":
            if "nocopy" in words:
                raise _config_error("bind", "field VolumeOptions must not be specified")
        elif any(w in PROPAGATION_MODES for w in words):
            raise _config_error("volume", "field BindOptions must not be specified")
    except InvalidParameter as exc:
        raise InvalidParameter(prefix + str(exc)) from None
    mp = MountPoint(type=mtype, destination=clean_destination(target), rw="ro" not in words, mode=mode,
                    origin="binds")
    if mtype == "bind":
        mp.source = posixpath.normpath(source)
        mp.propagation = next((w for w in words if w in PROPAGATION_MODES), DEFAULT_PROPAGATION)
        mp.create_source = True
    else:
        mp.name = _volume_name(source)
        mp.driver = volume_driver
        mp.copy_data = "nocopy" not in words
    return mp


def _volume_name(name: str) -> str:
    if name:
        try:
            validate_name("volume", name)
        except InvalidParameter as exc:
            raise InvalidParameter(f"create {name}: {exc}") from None
    return name


def _check_target(mtype: str, target: str) -> None:
    why = _abs(target)
    if why:
        raise _config_error(mtype, why)
    if posixpath.normpath(target) == "/":
        raise _config_error(mtype, "invalid specification: destination can't be '/'")


# -- Mounts (--mount) -------------------------------------------------------------------------------


def tmpfs_options(opts: Mapping[str, Any] | None, read_only: bool) -> str:
    """moby's ``ConvertTmpfsOptions``: ``ro``, ``mode=%o``, ``size=N[kmg]``."""
    out = ["ro"] if read_only else []
    opts = opts or {}
    mode = opts.get("Mode")
    if mode is not None and (_is_bool(mode) or not isinstance(mode, int) or not 0 <= mode <= 0o7777):
        raise _config_error("tmpfs", f"invalid tmpfs mode {mode!r}: expected permission bits (e.g. 1777 octal)")
    if mode:
        out.append(f"mode={mode:o}")
    size = opts.get("SizeBytes")
    if size is not None and (_is_bool(size) or not isinstance(size, int) or size < 0):
        raise _config_error("tmpfs", f"invalid tmpfs size {size!r}: expected a number of bytes")
    if size:
        suffix = ""
        for s, div in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
            if size % div == 0:
                size, suffix = size // div, s
                break
        out.append(f"size={size}{suffix}")
    return ",".join(out)


def parse_mount(obj: Any) -> MountPoint:
    """One ``HostConfig.Mounts`` entry (moby's ``ParseMountSpec`` with the bind source checked
    by the caller, who can see the host)."""
    if not isinstance(obj, Mapping):
        raise InvalidParameter(f"invalid mount config: expected an object, got {obj!r}")
    mtype = obj.get("Type")
    if not isinstance(mtype, str) or not mtype:
        raise InvalidParameter("invalid mount config: field Type must not be empty; valid types: bind, volume, tmpfs")
    source = obj.get("Source") or ""
    target = obj.get("Target") or ""
    if not isinstance(source, str) or not isinstance(target, str):
        raise _config_error(mtype, "Source and Target must be strings")
    read_only = obj.get("ReadOnly") or False
    if not _is_bool(read_only):
        raise _config_error(mtype, f"ReadOnly must be a boolean, got {read_only!r}")
    bind_opts = obj.get("BindOptions")
    vol_opts = obj.get("VolumeOptions")
    tmpfs_opts = obj.get("TmpfsOptions")
    if mtype not in MOUNT_TYPES:
        raise _config_error(mtype, "mount type unknown; valid types: bind, volume, tmpfs")
    if not target:
        raise _config_error(mtype, "field Target must not be empty")
    _check_target(mtype, target)
    own = {"bind": "BindOptions", "volume": "VolumeOptions", "tmpfs": "TmpfsOptions"}[mtype]
    for key, value in (("BindOptions", bind_opts), ("VolumeOptions", vol_opts), ("TmpfsOptions", tmpfs_opts)):
        if value is not None and key != own:
            raise _config_error(mtype, f"field {key} must not be specified")
    mp = MountPoint(type=mtype, destination=clean_destination(target), rw=not read_only, origin="mounts")
    if mtype == "bind":
        if not source:
            raise _config_error(mtype, "field Source must not be empty")
        bo = _opt_dict(bind_opts, "BindOptions")
        prop = bo.get("Propagation") or ""
        if prop and prop not in PROPAGATION_MODES:
            raise _config_error(mtype, f"invalid propagation mode: {prop}; valid modes: {', '.join(PROPAGATION_MODES)}")
        why = _abs(source)
        if why:
            raise _config_error(mtype, why)
        mp.source = posixpath.normpath(source)
        mp.propagation = prop or DEFAULT_PROPAGATION
    elif mtype == "volume":
        vo = _opt_dict(vol_opts, "VolumeOptions")
        if not source and read_only:
            raise _config_error(mtype, "must not set ReadOnly mode when using anonymous volumes")
        nocopy = vo.get("NoCopy") or False
        if not _is_bool(nocopy):
            raise _config_error(mtype, f"VolumeOptions.NoCopy must be a boolean, got {nocopy!r}")
        dc = _opt_dict(vo.get("DriverConfig"), "VolumeOptions.DriverConfig")
        driver = dc.get("Name") or ""
        if not isinstance(driver, str):
            raise _config_error(mtype, f"VolumeOptions.DriverConfig.Name must be a string, got {driver!r}")
        mp.name = _volume_name(source)
        mp.driver = driver
        mp.copy_data = not nocopy
        mp.driver_options = _str_map(dc.get("Options"), "VolumeOptions.DriverConfig.Options")
        mp.labels = _str_map(vo.get("Labels"), "VolumeOptions.Labels")
    else:
        if source:
            raise _config_error(mtype, "field Source must not be specified")
        mp.tmpfs_options = tmpfs_options(_opt_dict(tmpfs_opts, "TmpfsOptions"), read_only)
    return mp


# -- VolumesFrom ----------------------------------------------------------------------------------


def parse_volumes_from(spec: str) -> tuple[str, str]:
    """``CTR[:MODE]`` -> (container, mode); MODE may hold ``ro``/``rw`` and ``z``/``Z``."""
    if not isinstance(spec, str) or not spec:
        raise InvalidParameter(f"invalid VolumesFrom entry {spec!r}: expected CONTAINER[:ro|rw]")
    ref, _, mode = spec.partition(":")
    if not ref:
        raise InvalidParameter(f"invalid VolumesFrom entry '{spec}': the container is missing")
    words = _mode_words(mode)
    if mode and (not valid_mode(mode) or any(w not in _RW_MODES + _LABEL_MODES for w in words)):
        raise InvalidParameter(f"invalid mode: {mode} (in --volumes-from {spec}; valid modes: ro, rw)")
    return ref, mode


# -- the plan -------------------------------------------------------------------------------------


def plan_mounts(
    config: Mapping[str, Any],
    host_config: Mapping[str, Any],
    volumes_from: Callable[[str], Iterable[MountPoint]] = lambda ref: (),
) -> list[MountPoint]:
    """Every mount point of a new container, in Docker's order of precedence (see the module
    docstring). ``volumes_from(ref)`` returns another container's mount points (raising
    ``NotFound`` for no such container). Raises ``InvalidParameter`` for bad input."""
    driver = host_config.get("VolumeDriver") or ""
    if not isinstance(driver, str):
        raise InvalidParameter(f"invalid VolumeDriver: expected a string, got {driver!r}")
    points: dict[str, MountPoint] = {}
    for spec in host_config.get("VolumesFrom") or []:
        ref, mode = parse_volumes_from(spec)
        words = _mode_words(mode)
        for mp in volumes_from(ref):
            cp = MountPoint.from_json(mp.to_json())
            cp.origin = "volumes-from"
            if "ro" in words or "rw" in words:
                cp.rw = "rw" in words
                cp.mode = mode
            points.setdefault(cp.destination, cp)
    explicit: set[str] = set()
    binds = host_config.get("Binds") or []
    mounts = host_config.get("Mounts") or []
    if not isinstance(mounts, list):
        raise InvalidParameter(f"invalid Mounts: expected a list, got {mounts!r}")
    parsed = [parse_bind_spec(b, driver) for b in binds] + [parse_mount(m) for m in mounts]
    for mp in parsed:
        if mp.destination in explicit:
            raise InvalidParameter(f"Duplicate mount point: {mp.destination}")
        explicit.add(mp.destination)
        points[mp.destination] = mp
    for dest in host_config.get("Tmpfs") or {}:
        if clean_destination(dest) in explicit:
            raise InvalidParameter(f"Duplicate mount point: {clean_destination(dest)}")
    tmpfs = {clean_destination(d) for d in host_config.get("Tmpfs") or {}}
    for dest in sorted(config.get("Volumes") or {}):
        if not isinstance(dest, str) or not posixpath.isabs(dest):
            raise InvalidParameter(f"invalid volume specification: '{dest}': mount path must be absolute")
        dest = clean_destination(dest)
        if dest == "/":
            raise InvalidParameter(f"invalid volume specification: '{dest}': destination can't be '/'")
        if dest in points or dest in tmpfs:
            continue  # already mounted there (-v, --mount, --volumes-from, --tmpfs)
        points[dest] = MountPoint(type="volume", destination=dest, driver=driver, origin="image")
    return list(points.values())


def legacy_points(host_config: Mapping[str, Any]) -> list[MountPoint]:
    """The plan of a record made before plans were kept: its host-path ``Binds`` only."""
    out = []
    for b in host_config.get("Binds") or []:
        try:
            mp = parse_bind_spec(b)
        except InvalidParameter:
            continue
        if mp.type == "bind":
            out.append(mp)
    return out
