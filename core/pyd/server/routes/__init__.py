"""Route modules, one per API area; each has ``setup(app)`` and is listed in
``pyd.server.app.ROUTE_MODULES``."""
