"""The files Docker generates per container and bind-mounts over the image's copies:
``/etc/hostname``, ``/etc/hosts`` and ``/etc/resolv.conf``.

They live in the container's directory under the data-root (never written into the rootfs),
so a malicious image cannot redirect the write with a symlink. Content rules are Docker's:
resolv.conf keeps the host's ``search``/``options`` but drops loopback nameservers (they would
point into the container itself), falling back to Google's public resolvers when none remain;
``--dns``/``--dns-search``/``--dns-option`` replace the respective parts.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field


DEFAULT_DNS = ("8.8.8.8", "8.8.4.4")
HOSTS_HEADER = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


@dataclass
class ResolvConf:
    nameservers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


def parse_resolv_conf(text: str) -> ResolvConf:
    rc = ResolvConf()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            rc.nameservers.append(words[1])
        elif words[0] in ("search", "domain"):
            rc.search = words[1:]
        elif words[0] == "options":
            rc.options.extend(words[1:])
    return rc


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def container_resolv_conf(
    host_text: str,
    *,
    host_network: bool,
    dns: list[str] | None = None,
    dns_search: list[str] | None = None,
    dns_options: list[str] | None = None,
) -> str:
    """The container's resolv.conf from the host's content and the container's DNS options."""
    rc = parse_resolv_conf(host_text)
    if dns:
        servers = list(dns)
    elif host_network:
        servers = rc.nameservers
    else:
        servers = [s for s in rc.nameservers if not _is_loopback(s)]
        if not servers:
            servers = list(DEFAULT_DNS)
    search = list(dns_search) if dns_search else rc.search
    options = list(dns_options) if dns_options else rc.options
    out = []
    if search and search != ["."]:
        out.append("search " + " ".join(search))
    out.extend(f"nameserver {s}" for s in servers)
    if options:
        out.append("options " + " ".join(options))
    return "\n".join(out) + "\n"


def container_hosts(hostname: str, domainname: str = "", ip: str = "", extra: list[str] | None = None) -> str:
    text = HOSTS_HEADER
    for entry in extra or []:  # --add-host host:ip
        host, _, addr = entry.partition(":")
        text += f"{addr}\t{host}\n"
    if ip:
        names = f"{hostname}.{domainname} {hostname}" if domainname else hostname
        text += f"{ip}\t{names}\n"
    return text


def _replace(path: str, data: bytes) -> None:
    """Write then rename: readers (a running container's bind mount is of the old inode) never
    see a half-written file. Not fsynced: the files are written again at every start."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


@dataclass
class EtcFiles:
    hostname: str
    hosts: str
    resolv_conf: str


def write_etc_files(
    container_dir: str,
    *,
    hostname: str,
    domainname: str,
    network_mode: str,
    dns: list[str],
    dns_search: list[str],
    dns_options: list[str],
    extra_hosts: list[str] | None,
    ip: str = "",
    host_resolv_path: str = "/etc/resolv.conf",
    host_hosts_path: str = "/etc/hosts",
) -> EtcFiles:
    """Write ``hostname``, ``hosts`` and ``resolv.conf`` into ``container_dir`` (at every start,
    so they follow the host's DNS settings, as Docker's do); return their paths."""
    host_net = network_mode == "host"
    paths = EtcFiles(
        os.path.join(container_dir, "hostname"),
        os.path.join(container_dir, "hosts"),
        os.path.join(container_dir, "resolv.conf"),
    )
    _replace(paths.hostname, (hostname + "\n").encode())
    if host_net:
        hosts = _read(host_hosts_path) or container_hosts(hostname)
        for entry in extra_hosts or []:
            host, _, addr = entry.partition(":")
            hosts += f"{addr}\t{host}\n"
    else:
        hosts = container_hosts(hostname, domainname, ip, extra_hosts)
    _replace(paths.hosts, hosts.encode())
    resolv = container_resolv_conf(
        _read(host_resolv_path), host_network=host_net, dns=dns, dns_search=dns_search, dns_options=dns_options
    )
    _replace(paths.resolv_conf, resolv.encode())
    return paths
