"""The prediction log (``serve.prediction_log``): answered requests to the predictions topic.

``writer.py`` holds the bounded queue, the writer thread and the idempotent producer;
``rows.py`` turns one answered request into one record per row. The request path hands it
:class:`~streamtrain.serve.prediction_log.rows.ServedBatch` objects and never waits on it.
"""
