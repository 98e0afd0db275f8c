"""The container service's side of networking: calls into ``NetworkService`` at create,
start, exit, remove, rename, inspect and restore, kept out of ``containers.py``.

Every function takes the ``ContainerService`` and works when it has no network service
(``svc.networks is None``: no network driver installed, or a unit test): containers then run
as before, with a private network namespace holding only ``lo``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pyd.engine.network_attach import Attached, ContainerNetSpec, ContainerRef
from pyd.errors import NotFound

if TYPE_CHECKING:
    from pyd.engine.container_record import Container
    from pyd.engine.containers import ContainerService

BUILTIN_MODES = ("default", "bridge", "none", "host")


def _networks(svc: ContainerService) -> Any:
    return getattr(svc, "networks", None)


def spec_for(c: Container, endpoints_config: Mapping[str, Any] | None = None) -> ContainerNetSpec:
    cfg, hc = c.config, c.host_config
    return ContainerNetSpec(
        id=c.id,
        name=c.name,
        hostname=cfg.get("Hostname") or "",
        domainname=cfg.get("Domainname") or "",
        network_mode=hc.get("NetworkMode") or "default",
        endpoints_config=dict(endpoints_config or {}),
        port_bindings=dict(hc.get("PortBindings") or {}),
        publish_all=bool(hc.get("PublishAllPorts")),
        exposed_ports=list((cfg.get("ExposedPorts") or {}).keys()),
        dns=list(hc.get("Dns") or []),
        dns_search=list(hc.get("DnsSearch") or []),
        dns_options=list(hc.get("DnsOptions") or []),
        links=list(hc.get("Links") or []),
    )


def endpoints_config(body: Mapping[str, Any]) -> dict[str, Any]:
    nc = body.get("NetworkingConfig") or {}
    ec = nc.get("EndpointsConfig") if isinstance(nc, Mapping) else None
    return dict(ec) if isinstance(ec, Mapping) else {}


def validate(svc: ContainerService, c: Container, body: Mapping[str, Any]) -> None:
    """At create, before anything is made: the networks exist and may be combined."""
    nets = _networks(svc)
    mode = c.host_config.get("NetworkMode") or "default"
    if nets is None:
        if not (mode in BUILTIN_MODES or mode.startswith("container:")):
            raise NotFound(f"network {mode} not found")
        return
    nets._build_cnet(spec_for(c, endpoints_config(body)))  # raises what is wrong; stores nothing


def prepare_register(svc: ContainerService, c: Container, body: Mapping[str, Any]) -> Any:
    """At create, before anything is made: ``validate``, and the network record to write once
    the container exists (``Registration``: ``write()`` in the create's worker, ``commit()``
    after), or None without a network service."""
    nets = _networks(svc)
    if nets is None:
        validate(svc, c, body)
        return None
    return nets.prepare_registration(spec_for(c, endpoints_config(body)))


def register(svc: ContainerService, c: Container, body: Mapping[str, Any]) -> None:
    """After the container exists on disk: store its network configuration."""
    nets = _networks(svc)
    if nets is not None:
        nets.register_container(spec_for(c, endpoints_config(body)))


async def attach(svc: ContainerService, c: Container) -> Attached | None:
    """At start: the sandbox and endpoints (None without a network service or for
    ``container:X``, whose namespace the container service joins itself)."""
    nets = _networks(svc)
    mode = c.host_config.get("NetworkMode") or "default"
    if nets is None or mode.startswith("container:"):
        return None
    return await nets.attach_container(spec_for(c))


async def detach(svc: ContainerService, cid: str) -> None:
    nets = _networks(svc)
    if nets is not None:
        await nets.detach_container(cid)


async def forget(svc: ContainerService, cid: str) -> None:
    nets = _networks(svc)
    if nets is not None:
        await nets.forget_container(cid)


def renamed(svc: ContainerService, cid: str, name: str) -> None:
    nets = _networks(svc)
    if nets is not None:
        nets.container_renamed(cid, name)


async def reconcile(svc: ContainerService, running: Iterable[str]) -> None:
    nets = _networks(svc)
    if nets is not None:
        await nets.reconcile(running)


def adjust_spec(spec: Any, attached: Attached | None) -> None:
    """Point the process's network namespace at the sandbox (or the host's)."""
    if attached is None:
        return
    if attached.host_network:
        spec.namespaces.pop("net", None)
    elif attached.netns_path:
        spec.namespaces["net"] = attached.netns_path


def apply_etc(resolv_conf_path: str, hosts_path: str, attached: Attached | None) -> None:
    """After the usual /etc files are written: the embedded DNS's resolv.conf and ``--link``
    lines in hosts (write then rename, as the container service writes them)."""
    if attached is None:
        return
    if attached.resolv_conf is not None:
        _replace(resolv_conf_path, attached.resolv_conf.encode())
    if attached.hosts_entries:
        with open(hosts_path, encoding="utf-8") as f:
            text = f.read()
        text += "".join(f"{ip}\t{' '.join(names)}\n" for ip, names in attached.hosts_entries)
        _replace(hosts_path, text.encode())


def _replace(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def decorate_inspect(svc: ContainerService, c: Container, doc: dict[str, Any]) -> dict[str, Any]:
    nets = _networks(svc)
    if nets is not None and c.id in nets.cnets:
        doc["NetworkSettings"] = nets.container_settings(c.id)
    return doc


def decorate_list(svc: ContainerService, c: Container, entry: dict[str, Any]) -> dict[str, Any]:
    nets = _networks(svc)
    if nets is not None and c.id in nets.cnets:
        entry["Ports"] = nets.container_ports(c.id)
        entry["NetworkSettings"] = {"Networks": nets.container_settings(c.id)["Networks"]}
    return entry


def container_ref(svc: ContainerService, ref: str) -> ContainerRef:
    """For ``network connect``/``disconnect``: the container behind ``ref`` (NotFound)."""
    c = svc.get(ref)
    return ContainerRef(
        id=c.id,
        name=c.name,
        running=bool(c.state.running and not c.state.restarting),
        network_mode=c.host_config.get("NetworkMode") or "default",
        hostname=c.config.get("Hostname") or "",
    )
