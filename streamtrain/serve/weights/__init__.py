"""The hot-swap path: verified snapshots in, live weights out, requests run on them.

Walk it in this order: ``watcher.py`` (cache, then topic → loader; backoff while Kafka is
down) → ``retained.py`` (the last K versions, pin / rollback, in front of the slot) →
``slot.py`` (live and standby copies, swapped between requests; ``checks.py`` says whether a
base's or delta's tensors fit) with deltas followed by ``delta_chain.py``; ``inference.py``
runs a request on the live weights (direct or batching engine). Nothing here knows about
HTTP, gRPC or the prediction log.
"""
