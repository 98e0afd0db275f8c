"""The ``config`` of an image, and Dockerfile-style ``--change`` instructions applied to it.

An image config's ``config`` (and ``container_config``) is a container ``Config`` as moby's
Go struct serialises it: 17 keys always present, the rest only when set, in the struct's
field order. ``apply_changes`` implements ``docker import --change`` / ``docker commit
--change``: the instructions ``CMD``, ``ENTRYPOINT``, ``ENV``, ``EXPOSE``, ``HEALTHCHECK``,
``LABEL``, ``ONBUILD``, ``STOPSIGNAL``, ``USER``, ``VOLUME``, ``WORKDIR`` with Dockerfile
syntax (JSON or shell form, ``key=value`` pairs, quotes, ``$VAR`` expansion).
"""

from __future__ import annotations

import json
import posixpath
import re
import signal
from typing import Any, Iterable

from pyd.drivers.options import parse_duration
from pyd.errors import InvalidParameter

# Go's field order of container.Config; True: always present, False: omitted when empty.
_FIELDS: tuple[tuple[str, bool], ...] = (
    ("Hostname", True),
    ("Domainname", True),
    ("User", True),
    ("AttachStdin", True),
    ("AttachStdout", True),
    ("AttachStderr", True),
    ("ExposedPorts", False),
    ("Tty", True),
    ("OpenStdin", True),
    ("StdinOnce", True),
    ("Env", True),
    ("Cmd", True),
    ("Healthcheck", False),
    ("ArgsEscaped", False),
    ("Image", True),
    ("Volumes", True),
    ("WorkingDir", True),
    ("Entrypoint", True),
    ("NetworkDisabled", False),
    ("MacAddress", False),
    ("OnBuild", True),
    ("Labels", True),
    ("StopSignal", False),
    ("StopTimeout", False),
    ("Shell", False),
)
# The Config keys inspect shows, in Docker's order, with their "unset" values.
EMPTY_CONFIG: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "User": "",
    "AttachStdin": False,
    "AttachStdout": False,
    "AttachStderr": False,
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "Env": None,
    "Cmd": None,
    "Image": "",
    "Volumes": None,
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": None,
}

VALID_CHANGES = (
    "cmd",
    "entrypoint",
    "env",
    "expose",
    "healthcheck",
    "label",
    "onbuild",
    "stopsignal",
    "user",
    "volume",
    "workdir",
)


def empty_config() -> dict[str, Any]:
    """A container Config with every always-present key empty (``docker import``'s config)."""
    return dict(EMPTY_CONFIG)


def ordered_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """``cfg`` in Go's key order with the always-present keys filled and empty optional ones
    dropped; unknown keys are kept at the end (configs made by newer Docker versions)."""
    cfg = dict(cfg or {})
    out: dict[str, Any] = {}
    for key, always in _FIELDS:
        if key in cfg:
            value = cfg.pop(key)
            if always or value not in (None, "", False, 0, {}, []):
                out[key] = value
        elif always:
            out[key] = EMPTY_CONFIG[key]
    out.update(cfg)
    return out


# -- Dockerfile lexing ----------------------------------------------------------------------


def _env_map(env: Iterable[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in env or []:
        k, _, v = e.partition("=")
        out[k] = v
    return out


_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def _expand_vars(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        value = env.get(name, "")
        op, word = m.group(2), m.group(3)
        if op == ":-":
            return value if value else word
        if op == ":+":
            return word if value else ""
        return value

    return _VAR.sub(sub, text)


def _words(text: str, env: dict[str, str] | None) -> list[str]:
    """Split ``text`` into words like Docker's shell lexer: quotes group, backslash escapes,
    ``$VAR`` expands outside single quotes (when ``env`` is given)."""
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            i += 1
            continue
        in_word = True
        if c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise InvalidParameter(f"unexpected end of statement while looking for matching single-quote: {text}")
            cur.append(text[i + 1 : j])
            i = j + 1
        elif c == '"':
            j = i + 1
            buf: list[str] = []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n and text[j + 1] in '"\\$':
                    buf.append(text[j + 1])
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            if j >= n:
                raise InvalidParameter(f"unexpected end of statement while looking for matching double-quote: {text}")
            seg = "".join(buf)
            cur.append(_expand_vars(seg, env) if env is not None else seg)
            i = j + 1
        elif c == "\\" and i + 1 < n:
            cur.append(text[i + 1])
            i += 2
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "'\"\\":
                j += 1
            seg = text[i:j]
            cur.append(_expand_vars(seg, env) if env is not None else seg)
            i = j
    if in_word:
        words.append("".join(cur))
    return words


def _name_values(instr: str, rest: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """``KEY=VALUE ...`` pairs, or the legacy ``KEY VALUE WITH SPACES`` form."""
    words = _words(rest, env)
    if not words:
        raise InvalidParameter(f"{instr} requires at least one argument")
    if "=" not in words[0]:
        key, _, value = rest.strip().partition(" ")
        value = value.strip()
        if not value:
            raise InvalidParameter(f"{instr} must have two arguments")
        return [(key, " ".join(_words(value, env)))]
    out = []
    for w in words:
        key, eq, value = w.partition("=")
        if not eq or not key:
            raise InvalidParameter(f"{instr} names can not be blank" if not key else
                                   f"Syntax error - can't find = in \"{w}\". Must be of the form: name=value")
        out.append((key, value))
    return out


def _json_or_shell(rest: str) -> tuple[list[str], bool]:
    """A JSON array of strings (exec form) or the shell form ``["/bin/sh", "-c", rest]``."""
    text = rest.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value, True
    return ["/bin/sh", "-c", text], False


def _lines(changes: Iterable[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in "\n".join(changes).split("\n"):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if not line:
            continue
        instr, _, rest = line.partition(" ")
        if "\t" in instr:
            instr, _, more = instr.partition("\t")
            rest = more + " " + rest
        out.append((instr, rest.strip()))
    if pending.strip():
        instr, _, rest = pending.strip().partition(" ")
        out.append((instr, rest.strip()))
    return out


def _check_signal(value: str) -> None:
    s = value.strip().upper()
    if s.isdigit():
        if 0 < int(s) < 65:
            return
    else:
        name = s if s.startswith("SIG") else "SIG" + s
        if name in signal.Signals.__members__ or re.match(r"^SIGRT(MIN|MAX)([+-]\d+)?$", name):
            return
    raise InvalidParameter(f"Invalid signal: {value}")


def _ports(words: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for w in words:
        port, _, proto = w.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise InvalidParameter(f"invalid proto: {proto}")
        lo, dash, hi = port.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise InvalidParameter(f"invalid containerPort: {port}")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first or last > 65535:
            raise InvalidParameter(f"invalid range specified for containerPort: {port}")
        for p in range(first, last + 1):
            out[f"{p}/{proto}"] = {}
    return out


def _healthcheck(rest: str) -> dict[str, Any]:
    words = rest.split()
    hc: dict[str, Any] = {}
    flags = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod", "retries": "Retries"}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        if key not in flags:
            raise InvalidParameter(f"Unknown flag: {key}")
        if key == "retries":
            if not value.isdigit():
                raise InvalidParameter(f"invalid --retries value {value!r}: expected a positive integer")
            hc["Retries"] = int(value)
        else:
            try:
                hc[flags[key]] = int(parse_duration(value) * 1e9)
            except ValueError as exc:
                raise InvalidParameter(f"invalid --{key} value {value!r}: {exc}") from None
    if not words:
        raise InvalidParameter("Missing command after HEALTHCHECK")
    kind = words[0].upper()
    body = rest[rest.upper().index(words[0].upper()) + len(words[0]) :].strip()
    if kind == "NONE":
        if body:
            raise InvalidParameter("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind != "CMD":
        raise InvalidParameter(f"Unknown type {kind!r} in HEALTHCHECK (try CMD)")
    cmd, exec_form = _json_or_shell(body)
    return {"Test": (["CMD"] + cmd) if exec_form else ["CMD-SHELL", body], **hc}


def apply_changes(config: dict[str, Any], changes: Iterable[str]) -> dict[str, Any]:
    """Apply Dockerfile instructions to a copy of the container ``config`` and return it.

    Raises ``InvalidParameter`` naming the instruction for anything invalid, e.g.
    ``run is not a valid change command``.
    """
    cfg = ordered_config(json.loads(json.dumps(config or {})))
    cmd_set = False
    for instr, rest in _lines(changes):
        name = instr.lower()
        if name not in VALID_CHANGES:
            raise InvalidParameter(f"{name} is not a valid change command")
        env = _env_map(cfg.get("Env"))
        if name == "cmd":
            cfg["Cmd"], _ = _json_or_shell(rest)
            cmd_set = True
        elif name == "entrypoint":
            cfg["Entrypoint"], _ = _json_or_shell(rest)
            if not cmd_set:
                cfg["Cmd"] = None  # a new ENTRYPOINT drops an inherited CMD, as in a Dockerfile
        elif name == "env":
            current = list(cfg.get("Env") or [])
            for key, value in _name_values("ENV", rest, env):
                entry = f"{key}={value}"
                for i, e in enumerate(current):
                    if e.partition("=")[0] == key:
                        current[i] = entry
                        break
                else:
                    current.append(entry)
                env[key] = value
            cfg["Env"] = current
        elif name == "label":
            labels = dict(cfg.get("Labels") or {})
            for key, value in _name_values("LABEL", rest, env):
                labels[key] = value
            cfg["Labels"] = labels
        elif name == "expose":
            words = _words(rest, env)
            if not words:
                raise InvalidParameter("EXPOSE requires at least one argument")
            ports = dict(cfg.get("ExposedPorts") or {})
            ports.update(_ports(words))
            cfg["ExposedPorts"] = ports
        elif name == "volume":
            vols, exec_form = _json_or_shell(rest)
            if not exec_form:
                vols = _words(rest, env)
            if not vols:
                raise InvalidParameter("VOLUME requires at least one argument")
            volumes = dict(cfg.get("Volumes") or {})
            for v in vols:
                if not v.strip():
                    raise InvalidParameter("VOLUME specified can not be an empty string")
                volumes[v.strip()] = {}
            cfg["Volumes"] = volumes
        elif name == "workdir":
            words = _words(rest, env)
            if len(words) != 1:
                raise InvalidParameter("WORKDIR requires exactly one argument")
            path = words[0]
            if not path.startswith("/"):
                path = posixpath.join(cfg.get("WorkingDir") or "/", path)
            cfg["WorkingDir"] = posixpath.normpath(path)
        elif name == "user":
            words = _words(rest, env)
            if len(words) != 1:
                raise InvalidParameter("USER requires exactly one argument")
            cfg["User"] = words[0]
        elif name == "stopsignal":
            words = _words(rest, env)
            if len(words) != 1:
                raise InvalidParameter("STOPSIGNAL requires exactly one argument")
            _check_signal(words[0])
            cfg["StopSignal"] = words[0]
        elif name == "onbuild":
            trigger, _, body = rest.partition(" ")
            if trigger.upper() in ("ONBUILD", "FROM", "MAINTAINER") or not trigger:
                raise InvalidParameter(f"{trigger or 'ONBUILD'} isn't allowed as an ONBUILD trigger")
            cfg["OnBuild"] = list(cfg.get("OnBuild") or []) + [f"{trigger.upper()} {body}".strip()]
        elif name == "healthcheck":
            cfg["Healthcheck"] = _healthcheck(rest)
    return ordered_config(cfg)
