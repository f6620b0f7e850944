"""Knowledge base: articles in several locales, search, help center (a later issue)."""
