"""Schemathesis hooks for tests/e2e/test_openapi.py (SCHEMATHESIS_HOOKS names
this module): tus PATCH bodies are application/offset+octet-stream, raw bytes,
which schemathesis sends like application/octet-stream once told so."""
from __future__ import annotations

import schemathesis
from schemathesis.transport.requests import binary_serializer


@schemathesis.serializer("application/offset+octet-stream")
def tus_body(ctx, value):
    return binary_serializer(ctx, value)
