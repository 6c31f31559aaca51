"""The id a request is answered and logged under, checked on the request path.

The OIP request ``id`` when the client sends one (1 to 256 UTF-8 bytes), else a generated one
(32 hex digits), which the response returns in its ``id``. A request of ``n > 1`` rows is
logged as ``"<id>/0"`` ... ``"<id>/<n-1>"`` (:func:`streamtrain.serve.prediction_log.rows.row_ids`),
so the id leaves room for the longest row suffix.
"""

from __future__ import annotations

import uuid

from streamtrain.serve.protocol.bodies import ProtocolError
from streamtrain.wire.prediction_record import (
    MAX_ID_BYTES,
    PredictionRecordError,
    check_request_id,
)


def request_id_for(client_id: str | None, rows: int) -> str:
    """The id a request of ``rows`` rows is logged (and answered) under: the client's own,
    checked, or a new one when it sent none; ProtocolError (400) for an id the log cannot key.

    >>> request_id_for("order-1", 1), len(request_id_for(None, 3))
    ('order-1', 32)
    """
    if client_id is None:
        return uuid.uuid4().hex
    try:
        raw = check_request_id(client_id)
    except PredictionRecordError as exc:
        raise ProtocolError(
            f"request id is not usable for the prediction log: {exc.detail}; send an id of 1 "
            f"to {MAX_ID_BYTES} UTF-8 bytes, or none to have one generated"
        ) from None
    if rows > 1:
        longest = len(raw) + 1 + len(str(rows - 1))
        if longest > MAX_ID_BYTES:
            raise ProtocolError(
                f"request id is {len(raw)} UTF-8 bytes; its {rows} rows are logged as "
                f"'<id>/<row>', up to {longest} bytes, over the {MAX_ID_BYTES}-byte limit; "
                "send a shorter id"
            )
    return client_id
