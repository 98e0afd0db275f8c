"""Driver protocols: the methods each kind of driver object must provide.

One module per kind. A plugin's init hook (see ``pyd.hookspecs``) returns an object that
satisfies the protocol of its kind; optional abilities are separate small protocols checked
with ``isinstance`` (they are ``runtime_checkable``). Request dataclasses only ever grow
fields with defaults, so old drivers keep working.

| kind        | entry-point group  | protocol                                  |
|-------------|--------------------|-------------------------------------------|
| graphdriver | ``pyd.graphdriver``| ``pyd.drivers.graph.GraphDriver``         |
| network     | ``pyd.network``    | ``pyd.drivers.network.NetworkDriver``     |
| ipam        | ``pyd.ipam``       | ``pyd.drivers.ipam.IpamDriver``           |
| exec        | ``pyd.exec``       | ``pyd.drivers.execdriver.ExecDriver``     |
| log         | ``pyd.log``        | ``pyd.drivers.log.LogDriver``             |
| volume      | ``pyd.volume``     | ``pyd.drivers.volume.VolumeDriver``       |
| kvstore     | ``pyd.kvstore``    | ``pyd.drivers.kvstore.KVStore``           |
| authz       | ``pyd.authz``      | ``pyd.drivers.authz.Authorizer``          |
| security    | ``pyd.security``   | (hooks only: ``pyd_container_prepare``)   |

Helper modules hold no protocol: ``options`` (option parsers), ``state`` (atomic writes, JSON
records) and ``netlink`` (pyroute2 helpers for network drivers; imported only on demand).
"""
