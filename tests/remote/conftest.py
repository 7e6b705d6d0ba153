"""Fixtures of the remote tests: a moto S3 server on a free loopback port (one per session),
and a fresh bucket URL per test. No traffic leaves 127.0.0.1."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _atomic_conditional_puts(app: Any) -> Any:
    """A WSGI wrapper that serialises conditional PUTs (``If-None-Match: *``): real S3 makes
    create-if-absent atomic, moto checks and then writes, so 8 racing creators can both win
    on a loaded machine. The test server then keeps the guarantee the product relies on."""
    import threading

    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") == "PUT" and "HTTP_IF_NONE_MATCH" in environ:
            with lock:
                result = app(environ, start_response)
                try:
                    return [b"".join(result)]
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
        return app(environ, start_response)

    return wrapped


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Server(ThreadedMotoServer):  # type: ignore[misc]
        def _server_entry(self) -> None:
            app = _atomic_conditional_puts(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(
                self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_SESSION_TOKEN": "test",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = Server(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_options(s3_endpoint: str) -> dict[str, Any]:
    return {"client_kwargs": {"endpoint_url": s3_endpoint}}


@pytest.fixture
def s3_url(s3_endpoint: str, s3_options: dict[str, Any]) -> str:
    """A fresh, empty bucket; the URL of a prefix inside it."""
    import s3fs

    bucket = f"tvcs-{secrets.token_hex(4)}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_options)
    fs.mkdir(bucket)
    return f"s3://{bucket}/repo"
