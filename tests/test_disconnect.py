"""Acceptance 1 and 2: a client that leaves mid-request through stacked BaseHTTPMiddleware."""

from __future__ import annotations

import pytest

from tests.asgi import (
    STARLETTE_AFFECTED,
    STARLETTE_HAS_ANYIO,
    client_gone_after_body,
    pass_through,
    reads_body_then_answers,
    reads_body_then_streams,
    run,
    stack,
)

pytestmark = pytest.mark.skipif(
    not STARLETTE_HAS_ANYIO, reason="starlette < 0.15 has no anyio BaseHTTPMiddleware"
)

ENDPOINTS = {"plain": reads_body_then_answers, "streaming": reads_body_then_streams}


@pytest.mark.parametrize("layers", [2, 3], ids=["two-layers", "three-layers"])
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_client_gone_while_endpoint_works(shim: str, backend: str, endpoint: str, layers: int) -> None:
    app = stack(ENDPOINTS[endpoint](), *[pass_through] * layers)

    outcome = run(app, client_gone_after_body(), backend=backend)

    if shim == "unpatched" and STARLETTE_AFFECTED:
        assert outcome.no_response_returned, outcome
    else:
        assert outcome.clean, outcome


def test_single_layer_never_had_the_bug(shim: str, backend: str) -> None:
    app = stack(reads_body_then_answers(), pass_through)

    assert run(app, client_gone_after_body(), backend=backend).clean
