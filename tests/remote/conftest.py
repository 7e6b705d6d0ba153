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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

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
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
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
