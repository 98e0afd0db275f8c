"""The API server: an aiohttp app serving Docker Engine API shapes over the engine.

``pyd.server.app.make_app(engine)`` builds it; ``middleware`` holds the rules every request
passes (version prefix, authorization, error mapping, common headers); ``http`` the helpers
handlers use to read and write Docker-shaped JSON; ``routes/<area>.py`` the handlers.
"""
