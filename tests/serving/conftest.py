from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import replace

import pytest
from aiohttp import web

from serving.app import GUARD, HttpConfig, make_app
from serving.batcher import BatcherConfig
from serving.grpc_server import GrpcServer
from serving.service import Service, ServiceConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The real server on free loopback ports (HTTP and gRPC), in a background thread."""

    def __init__(self, service: Service, http: HttpConfig) -> None:
        self.service, self.http = service, http
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.grpc_port = free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = make_app(self.service, self.http)
        self.runner = web.AppRunner(app, access_log=None, auto_decompress=False)  # as serve
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.grpc = GrpcServer(
            self.service, app[GUARD], "127.0.0.1", self.grpc_port, self.http.max_body_bytes
        )
        self.loop.run_until_complete(self.grpc.start())
        self.started.set()
        self.loop.run_forever()

    def __enter__(self) -> LiveServer:
        self.thread.start()
        assert self.started.wait(30)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.grpc.stop(1), self.loop).result(30)
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.service.close()


@pytest.fixture(scope="module")
def service_config(exported_model):
    return ServiceConfig(
        model=exported_model,
        batcher=BatcherConfig(max_batch_size=16, max_queue_delay_us=3000),
        workers=32,
    )


@pytest.fixture(scope="module")
def server(service_config):
    with LiveServer(Service(service_config), HttpConfig(access_log=False)) as live:
        yield live


@pytest.fixture
def make_server(service_config):
    """A fresh server with custom settings (for limits, keys and overload)."""
    servers = []

    def make(http: HttpConfig | None = None, **service_kw) -> LiveServer:
        live = LiveServer(
            Service(replace(service_config, **service_kw)), http or HttpConfig(access_log=False)
        )
        servers.append(live.__enter__())
        return live

    yield make
    for live in servers:
        live.__exit__()
