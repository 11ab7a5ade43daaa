"""`python -m assistant` — serve the API on HOST:PORT (default 127.0.0.1:8000).

Idle keep-alive connections close after SERVER_KEEP_ALIVE_S; on SIGTERM the server stops accepting, lets the
requests in flight finish for up to SERVER_SHUTDOWN_TIMEOUT_S, cuts off the rest, then shuts the app down.
"""

from __future__ import annotations

import logging
import math
import os


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import uvicorn

    from .app import create_app
    from .settings import Settings

    settings = Settings.load()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        timeout_keep_alive=math.ceil(settings.server_keep_alive_s),
        timeout_graceful_shutdown=math.ceil(settings.server_shutdown_timeout_s),
    )


if __name__ == "__main__":
    main()
