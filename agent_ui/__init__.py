"""Agent console, supervisor wallboard and admin pages (issues 5, 6)."""
