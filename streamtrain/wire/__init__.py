"""The wire format of one sample on the samples topic: one module per format.

A sample is one Kafka record; its ``content-type`` header picks the format
(:mod:`~streamtrain.wire.content_type`):

* ``application/json`` (or no header): :mod:`~streamtrain.wire.json_format`, a UTF-8 JSON
  object decoded by a typed msgspec decoder.
* ``application/x-streamtrain-sample``: :mod:`~streamtrain.wire.binary_format`, a fixed
  little-endian layout decoded a poll at a time with one ``np.frombuffer`` (v1), or
  :mod:`~streamtrain.wire.binary_v2`, the same plus sparse ID features (v2).

Records that do not match are rejected with one reason of :data:`REASONS`
(:mod:`~streamtrain.wire.rejects`) and a detail that names what was expected; every decoded
sample then passes the same checks (:mod:`~streamtrain.wire.decoded`). ``docs/wire-format.md``
holds the same description for producers written in other languages.

>>> import numpy as np
>>> from streamtrain.sample.spec import SampleSpec
>>> spec = SampleSpec(feature_shape=(2,), task="binary")
>>> encode_json([0.5, 1.0], 1)
b'{"features":[0.5,1.0],"label":1}'
>>> decode_binary(spec, [encode_binary(spec, [0.5, 1.0], 1)], np.zeros(1)).labels.tolist()
[1]
"""

from streamtrain.wire.binary_format import (
    BINARY_MAGIC,
    binary_dtype,
    encode_binary,
    encode_binary_many,
)
from streamtrain.wire.binary_v2 import BINARY_MAGIC_V2, decode_binary, encode_binary_v2
from streamtrain.wire.content_type import (
    BINARY_CONTENT_TYPE,
    CONTENT_TYPE_HEADER,
    CONTENT_TYPES,
    JSON_CONTENT_TYPE,
    Format,
    content_type_of,
    content_types_of,
    format_of,
)
from streamtrain.wire.decoded import Decoded
from streamtrain.wire.json_format import JsonSample, decode_json, encode_json, typed_decoder
from streamtrain.wire.rejects import REASONS, Reject, RejectReason, SampleError, shape_text
from streamtrain.wire.sparse_fields import hash_id

__all__ = [
    "BINARY_CONTENT_TYPE",
    "BINARY_MAGIC",
    "BINARY_MAGIC_V2",
    "CONTENT_TYPES",
    "CONTENT_TYPE_HEADER",
    "JSON_CONTENT_TYPE",
    "REASONS",
    "Decoded",
    "Format",
    "JsonSample",
    "Reject",
    "RejectReason",
    "SampleError",
    "binary_dtype",
    "content_type_of",
    "content_types_of",
    "decode_binary",
    "decode_json",
    "encode_binary",
    "encode_binary_many",
    "encode_binary_v2",
    "encode_json",
    "format_of",
    "hash_id",
    "shape_text",
    "typed_decoder",
]
