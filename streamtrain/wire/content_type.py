"""Which codec a record uses: its ``content-type`` header, one value per wire format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/x-streamtrain-sample"

Format = Literal["json", "binary"]
CONTENT_TYPES: dict[str, str] = {"json": JSON_CONTENT_TYPE, "binary": BINARY_CONTENT_TYPE}

_JSON_TYPE = JSON_CONTENT_TYPE.encode()
_BINARY_TYPE = BINARY_CONTENT_TYPE.encode()


def content_type_of(headers: Sequence[tuple[str, bytes | None]] | None) -> bytes | None:
    """The value of the first content-type header (name case-insensitive), or None.

    >>> content_type_of([("Content-Type", b"application/json")])
    b'application/json'
    """
    for key, value in headers or ():
        if key.lower() == CONTENT_TYPE_HEADER:
            return value
    return None


def content_types_of(
    headers: Sequence[Sequence[tuple[str, bytes | None]] | None],
) -> list[bytes | None]:
    """The content type of each record from its headers, in order.

    A producer usually sends every record with the same headers: then one C-level comparison
    per record (``list.count``) replaces a Python-level header search per record.

    >>> content_types_of([[("content-type", b"a")], [("content-type", b"a")]])
    [b'a', b'a']
    """
    n = len(headers)
    if n and headers.count(headers[0]) == n:
        return [content_type_of(headers[0])] * n
    return list(map(content_type_of, headers))


def format_of(content_type: bytes | None) -> Format | None:
    """The wire format a content-type header value names; None for one naming neither.

    No header is JSON; JSON may carry parameters (``application/json; charset=utf-8``).

    >>> format_of(None), format_of(b"application/x-streamtrain-sample"), format_of(b"text/csv")
    ('json', 'binary', None)
    """
    if content_type is None or content_type.split(b";")[0].strip().lower() == _JSON_TYPE:
        return "json"
    if content_type.strip().lower() == _BINARY_TYPE:
        return "binary"
    return None
