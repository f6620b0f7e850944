"""The REST API under ``/api/v1``: thin controllers over the core's actions and views."""
