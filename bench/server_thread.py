"""The app under uvicorn in a background thread, for tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time


class ServerThread:
    """Runs the app under uvicorn in a background thread on an already-bound socket (port 0 picks
    a free one): for tests and benchmarks. Use as a context manager; `url` is the base URL.

    An inference service app (softprompt.serve.http) gets the connection limits of its
    ServeConfig the way `softprompt serve` sets them (softprompt.serve.protocol.uvicorn_options);
    any other ASGI app (the registry page of softprompt.webui) runs with uvicorn's defaults."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        from softprompt.serve.protocol import uvicorn_options

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        service = getattr(getattr(app, "state", None), "service", None)
        options = uvicorn_options(service.config) if service is not None else {}
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="on", **options)
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server at {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
