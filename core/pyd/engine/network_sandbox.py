"""Sandboxes: one network namespace per container, bind-mounted on a file.

The functions are the plugin API's (``pyd.drivers.network``), so the engine and the network
drivers make and remove namespaces the same way: ``create_netns(path)`` unshares in a
short-lived helper thread (the daemon never forks and its own threads never change
namespace), brings ``lo`` up and bind-mounts the namespace on ``path``; ``remove_netns``
unmounts lazily and deletes the file. All of them block; call them from a worker thread.
"""

from __future__ import annotations

from pyd.drivers.network import create_netns, is_netns, link_up, remove_netns

__all__ = ["create_netns", "is_netns", "link_up", "remove_netns"]
