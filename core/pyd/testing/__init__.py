"""pyd's conformance kit for plugin authors.

Each driver kind has a suite class in a module of this package (``pyd.testing.graphdriver``,
``pyd.testing.logdriver``, ...). Subclass it in your plugin's tests, set the driver's name
(the entry-point name) and a few kind-specific attributes, and pytest runs every check
against your driver loaded through its real entry point. The pytest plugin
(``pyd.testing.pytest_plugin``, registered through the ``pytest11`` entry point) provides the
fixtures the suites use.
"""
