"""The dashboard at ``/ui``: server-rendered pages (sandboxed Jinja, every value escaped),
htmx and uPlot vendored in ``static/``, on the same process, store and APIs the CLI uses.
Signed in with an API key, kept in a server-side session (``HttpOnly``, ``SameSite=Strict``
cookie); roles admin / reviewer / viewer; every form carries a CSRF token."""

from inferline.dashboard.app import dashboard_extension

__all__ = ["dashboard_extension"]
