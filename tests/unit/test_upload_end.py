"""gateway/uploads.py: when a stream's end is known to be the client's own
without waiting for a reset (the size Envoy saw declared, all of it come)."""
from __future__ import annotations

import pytest

from video2mp3.gateway.uploads import _all_declared


class Context:
    def __init__(self, metadata):
        self.metadata = metadata

    def invocation_metadata(self):
        return self.metadata


@pytest.mark.parametrize(("metadata", "size", "complete"), [
    ([("x-upload-length", "1234")], 1234, True),
    ([("authorization", "Bearer t"), ("x-upload-length", "1234")], 1234, True),
    ([("x-upload-length", "1234")], 1000, False),   # cut short: wait and see whether it was reset
    ([("x-upload-length", "1000")], 1234, False),   # more than declared: not trusted either
    ([("x-upload-length", "12x")], 12, False),
    ([("x-upload-length", b"1234")], 1234, False),  # binary metadata is never Envoy's
    ([], 1234, False),                               # gRPC clients declare nothing
])
def test_only_the_whole_declared_body_counts_as_complete(metadata, size, complete):
    assert _all_declared(Context(metadata), size) is complete
