"""``pyd daemon``: run the daemon, with dockerd's flags.

Only flags the user actually typed count as "flags" for daemon.json's conflict rule, so a
flag's default never clashes with the file. Boolean flags take dockerd's forms:
``--iptables`` and ``--iptables=false``. Heavy imports (aiohttp, the engine) happen inside the
command, so ``pyd --help`` stays fast.
"""

from __future__ import annotations

import os
from typing import Any

import click
from click.core import ParameterSource

# click parameter name -> (daemon.json key, how to turn the flag's value into the file's shape)
_LIST = "list"
_KV_MAP = "kv-map"  # repeated key=value -> {"key": "value"} (log-opts, cluster-store-opts)
_POOLS = "pools"  # repeated base=CIDR,size=N -> [{"base": ..., "size": N}]
_FLAG_KEYS: dict[str, tuple[str, str | None]] = {
    "host": ("hosts", _LIST),
    "data_root": ("data-root", None),
    "exec_root": ("exec-root", None),
    "pidfile": ("pidfile", None),
    "group": ("group", None),
    "storage_driver": ("storage-driver", None),
    "storage_opt": ("storage-opts", _LIST),
    "log_driver": ("log-driver", None),
    "log_opt": ("log-opts", _KV_MAP),
    "log_level": ("log-level", None),
    "exec_driver": ("exec-driver", None),
    "exec_opt": ("exec-opts", _LIST),
    "bridge": ("bridge", None),
    "bip": ("bip", None),
    "fixed_cidr": ("fixed-cidr", None),
    "mtu": ("mtu", None),
    "iptables": ("iptables", None),
    "ip_forward": ("ip-forward", None),
    "ip_masq": ("ip-masq", None),
    "icc": ("icc", None),
    "default_address_pool": ("default-address-pools", _POOLS),
    "dns": ("dns", _LIST),
    "dns_search": ("dns-search", _LIST),
    "dns_opt": ("dns-opts", _LIST),
    "authorization_plugin": ("authorization-plugins", _LIST),
    "seccomp_profile": ("seccomp-profile", None),
    "cluster_store": ("cluster-store", None),
    "cluster_advertise": ("cluster-advertise", None),
    "cluster_store_opt": ("cluster-store-opts", _KV_MAP),
    "insecure_registry": ("insecure-registries", _LIST),
    "registry_mirror": ("registry-mirrors", _LIST),
    "live_restore": ("live-restore", None),
    "debug": ("debug", None),
    "label": ("labels", _LIST),
    "shutdown_timeout": ("shutdown-timeout", None),
    "tls": ("tls", None),
    "tlsverify": ("tlsverify", None),
    "tlscacert": ("tlscacert", None),
    "tlscert": ("tlscert", None),
    "tlskey": ("tlskey", None),
}
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _bool_flag(*decls: str, help: str) -> Any:
    # dockerd's bool flags: "--x" means true, "--x=false" false
    return click.option(*decls, type=click.BOOL, is_flag=False, flag_value=True, default=None, metavar="[=BOOL]", help=help)


def _pools(values: tuple[str, ...]) -> list[dict[str, Any]]:
    from pyd.config import ConfigError

    pools = []
    for item in values:
        fields = dict(part.partition("=")[::2] for part in item.split(","))
        if set(fields) != {"base", "size"} or not fields["size"].isdigit():
            raise ConfigError(f'invalid --default-address-pool "{item}": expected base=CIDR,size=N')
        pools.append({"base": fields["base"], "size": int(fields["size"])})
    return pools


def given_flags(ctx: click.Context, params: dict[str, Any]) -> dict[str, object]:
    """The flags the user gave, keyed and shaped as daemon.json keys."""
    from pyd.config import parse_kv

    out: dict[str, object] = {}
    for param, (key, shape) in _FLAG_KEYS.items():
        if ctx.get_parameter_source(param) not in _GIVEN:
            continue
        value = params[param]
        if shape == _LIST:
            value = list(value)
        elif shape == _KV_MAP:
            value = parse_kv("--" + param.replace("_", "-"), value)
        elif shape == _POOLS:
            value = _pools(value)
        out[key] = value
    return out


@click.command("daemon", context_settings={"max_content_width": 100})
@click.option("-H", "--host", multiple=True, metavar="ADDR", help="Address to listen on (unix:///path, tcp://HOST:PORT with TLS); repeatable [unix:///run/pyd/pyd.sock].")
@click.option("--config-file", metavar="PATH", help="daemon.json to read [/etc/pyd/daemon.json; a missing default file is fine].")
@click.option("--data-root", metavar="PATH", help="Root of persistent state [/var/lib/pyd].")
@click.option("--exec-root", metavar="PATH", help="Root of run-time state [/run/pyd].")
@click.option("-p", "--pidfile", metavar="PATH", help="Pid file [<exec-root>/pyd.pid].")
@click.option("-G", "--group", metavar="GROUP", help="Group owning the unix sockets [pyd, if it exists].")
@click.option("-s", "--storage-driver", metavar="NAME", help="Storage driver [first of overlay2, vfs that works].")
@click.option("--storage-opt", multiple=True, metavar="KEY=VALUE", help="Storage driver option; repeatable.")
@click.option("--log-driver", metavar="NAME", help="Default log driver for containers [json-file].")
@click.option("--log-opt", multiple=True, metavar="KEY=VALUE", help="Default log driver option; repeatable.")
@click.option("-l", "--log-level", metavar="LEVEL", help="debug, info, warn, error, fatal [info].")
@_bool_flag("-D", "--debug", help="Debug logging.")
@click.option("--exec-driver", metavar="NAME", help="Exec driver [native].")
@click.option("--exec-opt", multiple=True, metavar="KEY=VALUE", help="Exec driver option; repeatable.")
@click.option("-b", "--bridge", metavar="NAME", help="Attach containers to this existing bridge.")
@click.option("--bip", metavar="CIDR", help="Address and prefix of the default bridge.")
@click.option("--fixed-cidr", metavar="CIDR", help="Range of the default bridge to allocate from.")
@click.option("--mtu", type=int, metavar="N", help="MTU of the default bridge [1500].")
@_bool_flag("--iptables", help="Let pyd manage iptables/nftables rules [true].")
@_bool_flag("--ip-forward", help="Enable net.ipv4.ip_forward [true].")
@_bool_flag("--ip-masq", help="Masquerade traffic leaving bridge networks [true].")
@_bool_flag("--icc", help="Allow traffic between containers of a bridge [true].")
@click.option("--default-address-pool", multiple=True, metavar="base=CIDR,size=N", help="Pool for new networks; repeatable.")
@click.option("--dns", multiple=True, metavar="IP", help="DNS server for containers; repeatable.")
@click.option("--dns-search", multiple=True, metavar="DOMAIN", help="DNS search domain; repeatable.")
@click.option("--dns-opt", multiple=True, metavar="OPT", help="DNS option; repeatable.")
@click.option("--authorization-plugin", multiple=True, metavar="NAME", help="Authorization plugin, in order; repeatable.")
@click.option("--seccomp-profile", metavar="PATH", help="Default seccomp profile (JSON) [built-in default].")
@click.option("--cluster-store", metavar="URL", help="KV store for multi-host networks, e.g. etcd://127.0.0.1:2379.")
@click.option("--cluster-advertise", metavar="ADDR", help="Address of this host for the cluster.")
@click.option("--cluster-store-opt", multiple=True, metavar="KEY=VALUE", help="KV store option; repeatable.")
@click.option("--insecure-registry", multiple=True, metavar="HOST", help="Registry reached over plain HTTP; repeatable.")
@click.option("--registry-mirror", multiple=True, metavar="URL", help="Registry mirror; repeatable.")
@_bool_flag("--live-restore", help="Keep containers running while the daemon is down.")
@click.option("--label", multiple=True, metavar="KEY=VALUE", help="Daemon label; repeatable.")
@click.option("--shutdown-timeout", type=int, metavar="SECONDS", help="Time to stop containers at shutdown [15].")
@_bool_flag("--tls", help="Use TLS on tcp:// hosts; implied by --tlsverify.")
@_bool_flag("--tlsverify", help="Use TLS and require client certificates signed by --tlscacert.")
@click.option("--tlscacert", metavar="PATH", help="CA for client certificates.")
@click.option("--tlscert", metavar="PATH", help="Server certificate.")
@click.option("--tlskey", metavar="PATH", help="Server key.")
@click.option("--validate", is_flag=True, help="Check the configuration and the drivers it selects, then exit.")
@click.pass_context
def daemon(ctx: click.Context, config_file: str | None, validate: bool, **params: Any) -> int:
    """Run the pyd daemon (the Docker Engine API on a unix socket)."""
    from pyd.config import DEFAULT_CONFIG_FILE, load_config

    flags = given_flags(ctx, params)
    if config_file is None and os.path.exists(DEFAULT_CONFIG_FILE):
        config_file = DEFAULT_CONFIG_FILE  # the default file is optional, an explicit one is not
    config = load_config(flags, config_file)

    if validate:
        from pyd.daemon import validate as validate_config

        validate_config(config)
        click.echo("configuration OK")
        return 0

    from pyd.daemon import serve

    return serve(config)

