"""The Flask seed's upload shape, `curl -F file=@video.mp4 .../upload`: a
multipart/form-data body. Parsed as it streams in (the `multipart` library's
push parser), so only the `file` part's bytes reach GridFS and memory holds
one message at a time."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import multipart

from video2mp3.core.errors import InvalidArgument, Reason

FILE_FIELD = "file"


class MalformedForm(InvalidArgument):
    def __init__(self, message: str):
        super().__init__(message, reason=Reason.INVALID_FORM)


def is_form(content_type: str) -> bool:
    return content_type.lower().startswith("multipart/form-data")


class FormFile:
    """Iterates the bytes of the form's `file` part (or its first file part);
    `filename` is that part's file name once iteration has reached it."""

    def __init__(self, content_type: str, messages: Iterable):
        _, params = multipart.parse_options_header(content_type)
        if not params.get("boundary"):
            raise MalformedForm("the multipart/form-data upload has no boundary")
        self._parser = multipart.PushMultipartParser(params["boundary"])
        self._messages = messages
        self.filename: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        taking = taken = False
        try:
            for msg in self._messages:
                for event in self._parser.parse(msg.body.data):
                    if isinstance(event, multipart.MultipartSegment):
                        taking = not taken and (event.name == FILE_FIELD or event.filename is not None)
                        if taking:
                            self.filename = event.filename
                    elif event is None:  # end of a part
                        taken = taken or taking
                        taking = False
                    elif taking:
                        yield bytes(event)
            self._parser.close()
        except multipart.MultipartError as e:
            raise MalformedForm(f"the multipart/form-data upload is malformed: {e}") from None
