"""Served quality: what each model version and each traffic-split arm scored on live traffic
once the labels came in (``docs/labels.md``, "Served quality")."""
