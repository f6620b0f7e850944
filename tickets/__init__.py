"""Tickets: cases, statuses, types, triggers and satisfaction surveys (a later issue)."""
