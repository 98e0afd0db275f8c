"""nftables rules of the bridge driver, all in pyd's own table ``ip <name_prefix>``.

Nothing outside that table is touched, so removing it removes everything pyd added, and the
host's own rules (or Docker's) keep working beside it. Layout::

    table ip <prefix>
      set bridges          names of every bridge of this driver      (isolation)
      map fwd_in/fwd_out   bridge -> jump n-<net>-in / n-<net>-out   (filter forward)
      map post_in/post_out bridge -> jump n-<net>-pin / n-<net>-pout (nat postrouting)
      chain raw_prerouting   drop packets from our bridges to 127.0.0.0/8 (route_localnet guard)
      chain forward          ct state established,related accept;
                             iifname vmap @fwd_in; oifname vmap @fwd_out
      chain prerouting/output (nat) fib daddr type local -> jump published
      chain published        one DNAT rule per published port, comment "<net12> <endpoint id>"
      chain postrouting      iifname vmap @post_in; oifname vmap @post_out

Per network N on bridge B (chains created, flushed and refilled in one transaction):

* ``n-N-in`` (traffic entering the host from B): internal: drop unless it goes back to B;
  connections to published ports (``ct status dnat``) pass; to any other of our bridges:
  drop (isolation); icc off: drop B to B (seen here through br_netfilter, as in Docker).
* ``n-N-out`` (traffic leaving through B): internal: drop unless it came from B.
* ``n-N-pin``: masquerade what leaves B's subnet for another interface (outbound NAT).
* ``n-N-pout``: masquerade 127.0.0.0/8 sources (published ports on the host's loopback,
  which needs ``route_localnet`` on B) and hairpin connections to published ports (source
  in B's subnet, destination rewritten by DNAT).

Every change is one ``nft -f -`` transaction: it applies completely or not at all. The
driver serialises calls (one lock), so the read-then-write steps below do not race.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Iterable

from pyd.errors import NotSupported, Unavailable

from pyd_network_bridge.state import NetworkState, PublishedPort

log = logging.getLogger(__name__)

MAPS = ("fwd_in", "fwd_out", "post_in", "post_out")
_NET_CHAINS = {"fwd_in": "in", "fwd_out": "out", "post_in": "pin", "post_out": "pout"}
NFT_TIMEOUT = 30.0


@dataclass
class TableView:
    """What is in the table now (from ``nft -j list table``)."""

    chains: set[str] = field(default_factory=set)
    bridges: set[str] = field(default_factory=set)
    maps: dict[str, dict[str, str]] = field(default_factory=dict)  # map -> key -> jump target
    published: list[tuple[int, str]] = field(default_factory=list)  # (handle, comment)


def _q(name: str) -> str:
    return json.dumps(name)  # ifnames are validated; quoting keeps nft's parser happy


def chain_name(st_short: str, kind: str) -> str:
    return f"n-{st_short}-{kind}"


def port_comment(network_id: str, endpoint_id: str) -> str:
    return f"{network_id[:12]} {endpoint_id[:64]}"


class Firewall:
    """Owns ``table ip <table>``. ``enabled=False`` (daemon ``iptables: false``) makes every
    method a no-op except ``publish``, which then raises ``NotSupported``."""

    def __init__(self, table: str, enabled: bool = True, nft: str = "nft") -> None:
        self.table = table
        self.enabled = enabled
        self.nft_path = shutil.which(nft) if enabled else None
        if enabled and self.nft_path is None:
            raise NotSupported(
                'network driver "bridge": the nft binary (Debian package nftables) is missing; '
                'install it or set "iptables": false'
            )

    # -- nft plumbing -------------------------------------------------------------------

    def _run(self, args: list[str], script: str | None = None) -> subprocess.CompletedProcess[str]:
        assert self.nft_path is not None
        try:
            return subprocess.run(
                [self.nft_path, *args],
                input=script,
                capture_output=True,
                text=True,
                timeout=NFT_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            raise Unavailable(f'network driver "bridge": nft did not answer within {NFT_TIMEOUT}s') from exc

    def apply(self, lines: Iterable[str]) -> None:
        script = "\n".join(lines) + "\n"
        if script.strip() == "":
            return
        res = self._run(["-f", "-"], script)
        if res.returncode != 0:
            raise Unavailable(
                f'network driver "bridge": nftables rejected the rules for table ip {self.table}: '
                f"{res.stderr.strip()}\n--- script ---\n{script}"
            )

    def view(self) -> TableView | None:
        """The table's contents, or None if it does not exist."""
        res = self._run(["-j", "list", "table", "ip", self.table])
        if res.returncode != 0:
            if "No such file" in res.stderr:
                return None
            raise Unavailable(f'network driver "bridge": nft list table ip {self.table}: {res.stderr.strip()}')
        return _parse_view(json.loads(res.stdout))

    def exists(self) -> bool:
        return self.enabled and self.view() is not None

    # -- the table ----------------------------------------------------------------------

    def _base(self) -> list[str]:
        t = f"ip {self.table}"
        lines = [f"add table {t}", f"add set {t} bridges {{ type ifname; }}"]
        lines += [f"add map {t} {m} {{ type ifname : verdict; }}" for m in MAPS]
        lines += [
            f"add chain {t} published",
            f"add chain {t} raw_prerouting {{ type filter hook prerouting priority raw; policy accept; }}",
            f"add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}",
            f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
            f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
            f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
        ]
        # The base chains' rules are the same for every network: rewrite them each time, so
        # a table left by an older version or a crash is brought to this layout.
        base_rules = {
            "raw_prerouting": ["iifname @bridges ip daddr 127.0.0.0/8 drop"],
            # Established flows skip the per-network chains: every drop below applies to a
            # flow's first packet, so nothing is lost, and bulk traffic does less work.
            "forward": [
                "ct state established,related accept",
                "iifname vmap @fwd_in",
                "oifname vmap @fwd_out",
            ],
            "prerouting": ["fib daddr type local jump published"],
            "output": ["fib daddr type local jump published"],
            "postrouting": ["iifname vmap @post_in", "oifname vmap @post_out"],
        }
        for chain, rules in base_rules.items():
            lines.append(f"flush chain {t} {chain}")
            lines += [f"add rule {t} {chain} {r}" for r in rules]
        return lines

    def ensure_network(self, st: NetworkState) -> None:
        """Create or refresh the network's chains and dispatch entries (idempotent)."""
        if not self.enabled:
            return
        t = f"ip {self.table}"
        b = _q(st.bridge)
        view = self.view() or TableView()
        lines = self._base()
        # A stale entry for this bridge name (e.g. a network that crashed half-deleted)
        # would make "add element" fail: replace it.
        for m in MAPS:
            if st.bridge in view.maps.get(m, {}):
                lines.append(f"delete element {t} {m} {{ {b} }}")
        rules: dict[str, list[str]] = {"in": [], "out": [], "pin": [], "pout": []}
        if st.internal:
            rules["in"].append(f"oifname != {b} drop")
            rules["out"].append(f"iifname != {b} drop")
        rules["in"].append("ct status dnat accept")  # published ports stay reachable
        rules["in"].append(f"oifname != {b} oifname @bridges drop")  # isolation
        if not st.icc:
            rules["in"].append(f"oifname {b} drop")
        if st.masquerade and not st.internal:
            rules["pin"].append(f"oifname != {b} masquerade")
        rules["pout"].append("ip saddr 127.0.0.0/8 masquerade")
        for gw in st.gateways:
            # Hairpin: a container reaching a published port (its own or a neighbour's)
            # through a host address. br_netfilter may bridge the DNATed packet straight
            # back (no iifname then), so match on the source subnet, as Docker does.
            subnet = ipaddress.IPv4Interface(gw).network
            rules["pout"].append(f"ip saddr {subnet} ct status dnat masquerade")
        for kind, body in rules.items():
            name = chain_name(st.short, kind)
            lines += [f"add chain {t} {name}", f"flush chain {t} {name}"]
            lines += [f"add rule {t} {name} {r}" for r in body]
        lines.append(f"add element {t} bridges {{ {b} }}")
        for m, kind in _NET_CHAINS.items():
            lines.append(f"add element {t} {m} {{ {b} : jump {chain_name(st.short, kind)} }}")
        self.apply(lines)

    def remove_network(self, network_id: str, bridge: str, *, drop_table: bool) -> None:
        """Remove the network's chains, entries and published ports; with ``drop_table``
        remove the whole table (the last network is gone). Missing pieces are skipped."""
        if not self.enabled:
            return
        view = self.view()
        if view is None:
            return
        t = f"ip {self.table}"
        if drop_table:
            self.apply([f"delete table {t}"])
            return
        b = _q(bridge)
        lines: list[str] = []
        for m in MAPS:
            if bridge in view.maps.get(m, {}):
                lines.append(f"delete element {t} {m} {{ {b} }}")
        if bridge in view.bridges:
            lines.append(f"delete element {t} bridges {{ {b} }}")
        mine = network_id[:12] + " "
        lines += [f"delete rule {t} published handle {h}" for h, c in view.published if c.startswith(mine)]
        for kind in _NET_CHAINS.values():
            name = chain_name(network_id[:12], kind)
            if name in view.chains:
                lines += [f"flush chain {t} {name}", f"delete chain {t} {name}"]
        self.apply(lines)

    def delete_table(self) -> None:
        if self.enabled and self.view() is not None:
            self.apply([f"delete table ip {self.table}"])

    # -- published ports ------------------------------------------------------------------

    def publish(self, network_id: str, endpoint_id: str, ports: list[PublishedPort]) -> None:
        """Replace the endpoint's DNAT rules with ``ports`` in one transaction."""
        if not self.enabled:
            raise NotSupported(
                'network driver "bridge": publishing ports needs firewall rules, which are '
                'disabled ("iptables": false)'
            )
        t = f"ip {self.table}"
        comment = port_comment(network_id, endpoint_id)
        view = self.view() or TableView()
        lines = [f"delete rule {t} published handle {h}" for h, c in view.published if c == comment]
        for p in ports:
            match = f"ip daddr {p.host_ip} " if p.host_ip else ""
            lines.append(
                f"add rule {t} published {match}{p.proto} dport {p.host_port} "
                f"dnat to {p.container_ip}:{p.container_port} comment {_q(comment)}"
            )
        self.apply(lines)

    def unpublish(self, network_id: str, endpoint_id: str) -> None:
        if not self.enabled:
            return
        view = self.view()
        if view is None:
            return
        comment = port_comment(network_id, endpoint_id)
        self.apply(
            f"delete rule ip {self.table} published handle {h}" for h, c in view.published if c == comment
        )

    def published_rules(self) -> list[tuple[int, str]]:
        view = self.view() if self.enabled else None
        return list(view.published) if view else []


def _parse_view(doc: dict[str, Any]) -> TableView:
    v = TableView()
    for item in doc.get("nftables", []):
        if "chain" in item:
            v.chains.add(item["chain"]["name"])
        elif "set" in item and item["set"]["name"] == "bridges":
            v.bridges = {e for e in item["set"].get("elem", []) if isinstance(e, str)}
        elif "map" in item and item["map"]["name"] in MAPS:
            entries: dict[str, str] = {}
            for e in item["map"].get("elem", []):
                if isinstance(e, list) and len(e) == 2 and isinstance(e[0], str):
                    verdict = e[1] if isinstance(e[1], dict) else {}
                    entries[e[0]] = str(verdict.get("jump", {}).get("target", ""))
            v.maps[item["map"]["name"]] = entries
        elif "rule" in item and item["rule"].get("chain") == "published":
            v.published.append((int(item["rule"]["handle"]), str(item["rule"].get("comment", ""))))
    return v
