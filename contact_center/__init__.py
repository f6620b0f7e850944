"""The contact center core: settings, database, the conversation stream, events, bus and jobs.

Nothing in this package knows a provider's wire format; channel adapters live in ``channels``.
Only the composition root (``contact_center.app`` and ``contact_center.cli``) imports the
other top-level packages.
"""

__version__ = "0.1.0"
