"""sentry-sdk and OpenTelemetry next to the shim, each set up before and after it."""

from __future__ import annotations

import pytest

from tests.asgi import GROUPS_ESCAPE, STARLETTE_AFFECTED
from tests.fresh import only_json_line, run_fresh

pytestmark = [
    pytest.mark.neighbours,
    pytest.mark.skipif(not STARLETTE_AFFECTED, reason="the neighbours session runs an affected starlette"),
]

APP = """
import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from tests.asgi import client_gone_at_once, client_stays, http_scope, pass_through, run

async def slow(request):
    await anyio.sleep(0.003)
    return PlainTextResponse("done")

async def boom(request):
    raise ValueError("boom from the endpoint")

def build():
    # Four layers: enough for both ranges (0.28 - 0.38.2 need four).
    return Starlette(
        routes=[Route("/", slow), Route("/boom", boom)],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=pass_through)] * 4,
    )

def outcome(app, path="/", gone=True):
    result = run(app, client_gone_at_once if gone else client_stays(), backend="asyncio",
                 scope=http_scope("GET", path))
    if result.clean:
        return "clean"
    if result.no_response_returned:
        return "No response returned."
    return sorted(type(error).__name__ for error in result.errors())
"""

SENTRY = """
import sentry_sdk
from sentry_sdk.integrations.starlette import StarletteIntegration
from sentry_sdk.transport import Transport

captured = []

class MemoryTransport(Transport):
    def capture_envelope(self, envelope):
        captured.extend(item.payload.json for item in envelope.items if item.payload.json)

def init_sentry():
    sentry_sdk.init(
        dsn="http://public@127.0.0.1:9/1", transport=MemoryTransport, traces_sample_rate=1.0,
        integrations=[StarletteIntegration(middleware_spans=True)], auto_enabling_integrations=False,
    )

def exceptions_captured():
    values = [value for event in captured for value in event.get("exception", {}).get("values", [])]
    return sorted(value["type"] for value in values)

def events_by_type():
    # An event's own type is its last exception value's (those before it are its causes and
    # contexts, or the members of a group, which comes last).
    events = [event["exception"]["values"] for event in captured if event.get("exception")]
    return [values[-1]["type"] for values in events]
"""


SENTRY_ORDERS = {
    "shim-first": "import starlette_shield_patch\ninit_sentry()\napp = build()",
    "sentry-first": "init_sentry()\nimport starlette_shield_patch\napp = build()",
    # sentry wraps BaseHTTPMiddleware.__call__ as the app is built; the shim then wraps sentry's.
    "shim-after-the-app-is-built": "init_sentry()\napp = build()\nimport starlette_shield_patch",
}


@pytest.mark.parametrize("order", list(SENTRY_ORDERS))
def test_sentry_still_captures_and_the_fix_holds_in_every_order(order: str) -> None:
    code = f"""
{APP}
{SENTRY}
{SENTRY_ORDERS[order]}
import starlette_shield_patch
status = starlette_shield_patch.status()
fixed = outcome(app)
boom = outcome(app, "/boom", gone=False)
sentry_sdk.flush()
captured_before_remove = exceptions_captured()
events_before_remove = events_by_type()
starlette_shield_patch.remove()
removed = starlette_shield_patch.status()
captured.clear()
outcome(app, "/boom", gone=False)
sentry_sdk.flush()
report(fixed=fixed, boom=boom, captured=captured_before_remove, status_patched=status.patched,
       events=events_before_remove, events_unpatched=events_by_type(),
       after_remove=outcome(app), removed_reason=removed.reason, removed_patched=removed.patched,
       spans=sorted(set(span.get("op", "") for event in captured for span in event.get("spans", []))))
"""
    report = only_json_line(run_fresh(code))

    assert report["status_patched"] is True
    assert report["fixed"] == "clean"
    assert report["boom"] == ["ValueError"]
    assert "ValueError" in report["captured"], report["captured"]  # sentry still does its job
    assert "RuntimeError" not in report["captured"]  # and it saw no "No response returned."
    assert report["events"] == ["ValueError"]  # the event has the error's own type
    if GROUPS_ESCAPE:  # and it is the shim that makes it so
        assert report["events_unpatched"] == ["ExceptionGroup"], report["events_unpatched"]
    assert "middleware.starlette" in report["spans"]
    assert report["removed_patched"] is False
    assert report["after_remove"] == "No response returned."  # remove() really took the fix away
    if order != "shim-after-the-app-is-built":  # sentry's wrapper on top of the shim's stays
        assert "another wrapper sits on top" in report["removed_reason"]


@pytest.mark.parametrize("order", ["shim-first", "otel-first"])
def test_opentelemetry_still_records_and_the_fix_holds_in_every_order(order: str) -> None:
    code = f"""
{APP}
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
{"import starlette_shield_patch" if order == "shim-first" else ""}
app = OpenTelemetryMiddleware(build(), tracer_provider=provider)
import starlette_shield_patch
fixed = outcome(app)
normal = outcome(app, gone=False)
spans = exporter.get_finished_spans()
report(fixed=fixed, normal=normal, patched=starlette_shield_patch.status().patched,
       servers=[(span.attributes.get("http.status_code") or span.attributes.get("http.response.status_code"))
                for span in spans if span.kind.name == "SERVER"])
"""
    report = only_json_line(run_fresh(code))

    assert report["patched"] is True
    assert report["fixed"] == "clean"
    assert report["normal"] == "clean"
    assert report["servers"] and report["servers"][-1] == 200  # the span of the normal request
