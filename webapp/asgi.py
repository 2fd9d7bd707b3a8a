"""ASGI entry point (uvicorn webapp.asgi:application): HTTP goes to Django, websockets to the
consumers of webapp.routing behind session authentication and an Origin check (scheme, host and
port: webapp.lib.origins)."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
# Set up Django (apps, models) before anything imports consumers.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from webapp.lib.origins import SameOriginValidator  # noqa: E402
from webapp.lib.uploads import UploadLimitASGIMiddleware  # noqa: E402
from webapp.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({
    # Django's ASGI handler spools the whole body before upload handlers run: cut it short here.
    "http": UploadLimitASGIMiddleware(django_asgi_app),
    "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
})
