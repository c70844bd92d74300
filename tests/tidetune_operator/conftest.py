from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.tidetune.cases import edit, example
from tidetune.api import FineTuneJob
from tidetune.api.idlepool import IdlePool
from tidetune_operator.config import OperatorConfig


def make_job(
    name: str = "sft-lora.yaml",
    edits: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
) -> FineTuneJob:
    doc = edit(example(name), edits or {})
    doc["metadata"].update(uid="0f6d8a4e-1111-2222-3333-444455556666", generation=1)
    if status is not None:
        doc["status"] = status
    return FineTuneJob.model_validate(doc)


def make_pool(edits: dict[str, Any] | None = None) -> IdlePool:
    doc = edit(example("idlepool.yaml", "IdlePool"), edits or {})
    doc["metadata"]["generation"] = 1
    return IdlePool.model_validate(doc)


@pytest.fixture
def config() -> OperatorConfig:
    return OperatorConfig.model_validate(
        {
            "trainerImage": "registry.example.com/tidetune/trainer:1.0",
            "defaultOutputUri": "s3://runs/",
        }
    )


@contextlib.asynccontextmanager
async def loopback_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """An HTTP server on a free 127.0.0.1 port that sends every request to ``handler``
    (a stand-in for the API server's answers); yields its URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
