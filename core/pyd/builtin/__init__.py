"""Core plugins: replaceable behaviour that ships with the core (see ``registry.CORE_PLUGINS``)."""
