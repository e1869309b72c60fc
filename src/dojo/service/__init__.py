"""The multi-tenant training service (layer 10): tile scheduler, store, HTTP API, workers and
web console. Nothing in the library below imports it (docs/service.md)."""
