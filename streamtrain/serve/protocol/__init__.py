"""The request path: Open Inference Protocol (KServe v2) over REST and gRPC, and the admin API.

``dataplane.py`` is the one served model both transports call (name and version checks, the
infer sequence, timing, request accounting, the prediction-log hand-off); ``rest.py`` and
``grpc_service.py`` only decode a request and encode its answer. The codecs: ``bodies.py``
(OIP JSON and Triton binary tensors), ``tensor_data.py``, ``sparse_inputs.py``,
``grpc_tensors.py``, ``classification.py``; ``statistics.py`` (Triton inference statistics),
``request_ids.py`` (the id a request is answered and logged under), ``admin.py`` (pin,
unpin, rollback). It depends on ``serve/weights`` and ``serve/prediction_log``, never the
other way round.
"""
