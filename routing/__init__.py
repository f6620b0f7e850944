"""Routing: queues, skills, presence, capacity, offers, assignment; SLA clocks (issues 4, 6)."""
