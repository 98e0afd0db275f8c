"""pyd: a container engine with a minimal core and drivers shipped as plugins."""

__version__ = "0.1.0"

# The version of the plugin API: hookspecs (pyd.hookspecs), driver protocols (pyd.drivers)
# and error classes (pyd.errors). Plugins may check it; it changes only when a hook or
# protocol changes incompatibly (growing one with optional arguments does not bump it).
PLUGIN_API_VERSION = "0.1"

# The Docker Engine API version the daemon speaks, and the oldest it accepts.
API_VERSION = "1.41"
MIN_API_VERSION = "1.12"
