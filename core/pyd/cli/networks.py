"""``pyd network create|ls|inspect|rm|prune|connect|disconnect``, with docker's flags and output.

Only the client is imported (never the engine); options are checked by the daemon and the
network's driver (``-o``) or IPAM driver.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import click

from pyd.cli import common

NETWORK_TABLE = "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}"
NETWORK_HEADERS = {"ID": "NETWORK ID"}
_PRUNE_WARNING = "WARNING! This will remove all custom networks not used by at least one container."


def _path(name: str) -> str:
    from pyd.client import quote_path

    return quote_path(name)


def _kv_map(values: tuple[str, ...], flag: str) -> dict[str, str]:
    """docker's ``KEY=VALUE`` lists (``--label``, ``-o``): a bare ``KEY`` means an empty value."""
    out: dict[str, str] = {}
    for item in values:
        key, _, value = item.partition("=")
        if not key:
            raise click.UsageError(f'invalid argument "{item}" for "{flag}": expected KEY=VALUE')
        out[key] = value
    return out


def _rfc3339_seconds(text: str) -> int:
    """``2026-11-28T07:13:40.039493966Z`` -> Unix seconds."""
    import datetime as dt

    main = text.replace("Z", "+00:00")
    if "." in main:  # fromisoformat takes at most 6 fraction digits before 3.11's full ISO support
        head, _, rest = main.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        main = head + rest[len(digits):]
    return int(dt.datetime.fromisoformat(main).timestamp())


class NetworkRow:
    """One line of ``pyd network ls``: the fields docker's ``--format`` offers."""

    def __init__(self, n: dict[str, Any], no_trunc: bool) -> None:
        self._n, self._no_trunc = n, no_trunc

    @property
    def ID(self) -> str:  # noqa: N802 - docker's template names
        return common.short_id(self._n.get("Id", ""), self._no_trunc)

    @property
    def Name(self) -> str:  # noqa: N802
        return self._n.get("Name", "")

    @property
    def Driver(self) -> str:  # noqa: N802
        return self._n.get("Driver", "")

    @property
    def Scope(self) -> str:  # noqa: N802
        return self._n.get("Scope", "")

    @property
    def IPv6(self) -> str:  # noqa: N802
        return "true" if self._n.get("EnableIPv6") else "false"

    @property
    def Internal(self) -> str:  # noqa: N802
        return "true" if self._n.get("Internal") else "false"

    @property
    def Labels(self) -> str:  # noqa: N802
        return ",".join(f"{k}={v}" for k, v in sorted((self._n.get("Labels") or {}).items()))

    @property
    def CreatedAt(self) -> str:  # noqa: N802
        created = self._n.get("Created", "")
        try:
            secs = _rfc3339_seconds(created)
        except ValueError:
            return created
        return time.strftime("%Y-%m-%d %H:%M:%S %z %Z", time.localtime(secs))

    def Label(self, key: str) -> str:  # noqa: N802 - {{.Label "key"}}
        return (self._n.get("Labels") or {}).get(key, "")

    def __json__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("CreatedAt", "Driver", "ID", "IPv6", "Internal", "Labels", "Name", "Scope")}


def ipam_configs(
    subnets: tuple[str, ...], ip_ranges: tuple[str, ...], gateways: tuple[str, ...], aux: dict[str, str]
) -> list[dict[str, Any]]:
    """docker's pairing of ``--subnet``/``--ip-range``/``--gateway``/``--aux-address``: each
    range, gateway and auxiliary address goes to the subnet that contains it."""
    configs: list[dict[str, Any]] = []
    nets = []
    for s in subnets:
        try:
            net = ipaddress.ip_network(s, strict=False)
        except ValueError:
            raise click.UsageError(f'invalid --subnet "{s}": not a CIDR (e.g. 172.28.0.0/16)') from None
        for other in nets:
            if other.overlaps(net):
                raise click.UsageError(f"multiple overlapping subnet configuration is not supported ({other}, {s})")
        nets.append(net)
        configs.append({"Subnet": s})

    def owner(value: str, what: str) -> dict[str, Any]:
        try:
            addr = ipaddress.ip_network(value, strict=False) if "/" in value else ipaddress.ip_address(value)
        except ValueError:
            raise click.UsageError(f'invalid {what} "{value}"') from None
        for net, cfg in zip(nets, configs):
            inside = addr.subnet_of(net) if isinstance(addr, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else addr in net  # type: ignore[arg-type]
            if inside:
                return cfg
        raise click.UsageError(f"no matching subnet for {what} {value}")

    for r in ip_ranges:
        cfg = owner(r, "range")
        if cfg.get("IPRange"):
            raise click.UsageError("cannot configure multiple ranges on the same subnet")
        cfg["IPRange"] = r
    for g in gateways:
        cfg = owner(g, "gateway")
        if cfg.get("Gateway"):
            raise click.UsageError(f"cannot configure multiple gateways ({cfg['Gateway']}, {g}) for the same subnet")
        cfg["Gateway"] = g
    for name, addr in aux.items():
        owner(addr, "aux-address").setdefault("AuxiliaryAddresses", {})[name] = addr
    return configs


@click.command("create")
@click.option("-d", "--driver", default="bridge", show_default=True, help="Driver to manage the Network.")
@click.option("--subnet", multiple=True, help="Subnet in CIDR format that represents a network segment.")
@click.option("--ip-range", multiple=True, help="Allocate container IPs from a sub-range.")
@click.option("--gateway", multiple=True, help="IPv4 Gateway for the master subnet.")
@click.option("--aux-address", multiple=True, help="Auxiliary IPv4 addresses used by Network driver (NAME=IP).")
@click.option("--internal", is_flag=True, help="Restrict external access to the network.")
@click.option("--attachable", is_flag=True, help="Enable manual container attachment.")
@click.option("--ipv6", is_flag=True, help="Enable IPv6 networking.")
@click.option("--label", multiple=True, help="Set metadata on a network.")
@click.option("-o", "--opt", multiple=True, help="Set driver specific options.")
@click.option("--ipam-driver", default="default", show_default=True, help="IP Address Management Driver.")
@click.option("--ipam-opt", multiple=True, help="Set IPAM driver specific options.")
@click.option("--scope", default="", help="Control the network's scope.")
@click.argument("name")
def create(driver: str, subnet: tuple[str, ...], ip_range: tuple[str, ...], gateway: tuple[str, ...],
           aux_address: tuple[str, ...], internal: bool, attachable: bool, ipv6: bool, label: tuple[str, ...],
           opt: tuple[str, ...], ipam_driver: str, ipam_opt: tuple[str, ...], scope: str, name: str) -> None:
    """Create a network."""
    body = {
        "Driver": driver,
        "Scope": scope,
        "EnableIPv6": ipv6,
        "IPAM": {
            "Driver": ipam_driver,
            "Options": _kv_map(ipam_opt, "--ipam-opt"),
            "Config": ipam_configs(subnet, ip_range, gateway, _kv_map(aux_address, "--aux-address")),
        },
        "Internal": internal,
        "Attachable": attachable,
        "Ingress": False,
        "ConfigOnly": False,
        "ConfigFrom": None,
        "Options": _kv_map(opt, "--opt"),
        "Labels": _kv_map(label, "--label"),
        "Name": name,
        "CheckDuplicate": True,
    }
    reply = common.get_client().post("/networks/create", data=body)
    if reply.get("Warning"):
        common.warn(f"WARNING: {reply['Warning']}")
    common.write(reply["Id"] + "\n")


@click.command("ls")
@common.filter_option
@common.format_option
@common.no_trunc_option
@common.quiet_option
def ls(filters: tuple[str, ...], format_: str | None, no_trunc: bool, quiet: bool) -> None:
    """List networks."""
    nets = common.get_client().get("/networks", params={"filters": common.parse_filters(filters)})
    nets = sorted(nets, key=lambda n: n.get("Name", ""))
    common.print_list([NetworkRow(n, no_trunc) for n in nets], format_, default=NETWORK_TABLE,
                      headers=NETWORK_HEADERS, quiet=quiet)


@click.command("inspect")
@click.option("-f", "--format", "format_", default=None, help="Format output using a custom template.")
@click.option("-v", "--verbose", is_flag=True, help="Verbose output for diagnostics.")
@click.argument("networks", nargs=-1, required=True)
def inspect(format_: str | None, verbose: bool, networks: tuple[str, ...]) -> None:
    """Display detailed information on one or more networks."""
    client = common.get_client()
    params = {"verbose": "true"} if verbose else None
    common.inspect_objects(networks, lambda name: client.get(f"/networks/{_path(name)}", params=params),
                           "network", format_)


@click.command("rm")
@click.option("-f", "--force", is_flag=True, help="Do not error if the network does not exist.")
@click.argument("networks", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, force: bool, networks: tuple[str, ...]) -> None:
    """Remove one or more networks."""
    from pyd.errors import NotFound, PydError

    client = common.get_client()
    failed = False
    for name in networks:
        try:
            client.delete(f"/networks/{_path(name)}")
        except NotFound as exc:
            if force:
                continue
            common.warn(f"Error response from daemon: {exc}")
            failed = True
            continue
        except PydError as exc:
            common.warn(f"Error response from daemon: {exc}")
            failed = True
            continue
        common.write(name + "\n")
    if failed:
        ctx.exit(1)


@click.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.option("--filter", "filters", multiple=True, metavar="FILTER",
              help="Provide filter values (e.g. 'until=<timestamp>', 'label=k=v'); repeatable.")
def prune(force: bool, filters: tuple[str, ...]) -> None:
    """Remove all unused networks."""
    # docker prints no reclaimed space for networks
    common.prune_objects("/networks/prune", filters, force=force, warning=_PRUNE_WARNING,
                         deleted_key="NetworksDeleted", heading="Deleted Networks", reclaimed=False)


@click.command("connect")
@click.option("--alias", multiple=True, help="Add network-scoped alias for the container.")
@click.option("--ip", default="", help="IPv4 address (e.g., 172.30.100.104).")
@click.option("--ip6", default="", help="IPv6 address (not supported by pyd networks).")
@click.option("--link", multiple=True, help="Add link to another container.")
@click.option("--driver-opt", multiple=True, help="driver options for the network.")
@click.argument("network")
@click.argument("container")
def connect(alias: tuple[str, ...], ip: str, ip6: str, link: tuple[str, ...], driver_opt: tuple[str, ...],
            network: str, container: str) -> None:
    """Connect a container to a network."""
    ipam: dict[str, str] = {}
    if ip:
        ipam["IPv4Address"] = ip
    if ip6:
        ipam["IPv6Address"] = ip6
    body = {
        "Container": container,
        "EndpointConfig": {
            "IPAMConfig": ipam,
            "Links": list(link) or None,
            "Aliases": list(alias) or None,
            "DriverOpts": _kv_map(driver_opt, "--driver-opt"),
        },
    }
    common.get_client().post(f"/networks/{_path(network)}/connect", data=body)


@click.command("disconnect")
@click.option("-f", "--force", is_flag=True, help="Force the container to disconnect from a network.")
@click.argument("network")
@click.argument("container")
def disconnect(force: bool, network: str, container: str) -> None:
    """Disconnect a container from a network."""
    common.get_client().post(f"/networks/{_path(network)}/disconnect", data={"Container": container, "Force": force})
