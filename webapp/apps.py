"""The project's own app: account-wide behaviour that no other app owns.

- A changed password ends the user's API token (``webapp.lib.accounts.end_tokens_on_password_change``):
  whoever knew the old password may have fetched the token with it.
- Every Django process (web, tests, management commands) loads the Celery app here, so that
  ``@shared_task`` calls go to its broker; the package's ``__init__`` stays empty for pure imports.
- ``migrate`` also creates the database cache table, where the embedded mode keeps the rate-limit
  counters that its processes share (``webapp.lib.ratelimit``).
"""
from django.apps import AppConfig
from django.core.management import call_command
from django.conf import settings
from django.db.models.signals import post_migrate, post_save


def create_cache_table(sender, using: str = "default", **kwargs) -> None:
    """``createcachetable`` after ``migrate`` (it does nothing when the table exists or no cache
    is a database cache)."""
    call_command("createcachetable", database=using, verbosity=0)


class WebappConfig(AppConfig):
    name = "webapp"
    verbose_name = "NetAdapt Studio"

    def ready(self) -> None:
        # Here, not at the top: accounts loads models (the token), which needs the app registry ready.
        from webapp.lib.accounts import end_tokens_on_password_change
        import webapp.celery  # noqa: F401  (binds the shared tasks to this project's app)

        post_save.connect(end_tokens_on_password_change, sender=settings.AUTH_USER_MODEL,
                          dispatch_uid="webapp-end-tokens-on-password-change")
        post_migrate.connect(create_cache_table, sender=self, dispatch_uid="webapp-create-cache-table")
