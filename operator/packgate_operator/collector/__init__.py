"""The audit collector: the place sealed audit records go when they leave the pod.

Sidecars ship their hash-chained records here (``ingest.py`` decides what to keep, ``store.py``
keeps it on a PersistentVolumeClaim, ``index.py`` makes it searchable); platform teams read it
through Kubernetes Events (``events.py``), ``packgate audit query`` and the Events page
(``server.py``), with access checked against the caller's own Kubernetes permissions
(``access.py``). See docs/audit.md.
"""
