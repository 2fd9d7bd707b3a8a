"""URL configuration. Uploaded files and job outputs are never served from MEDIA_URL: downloads
go through views that check ownership."""
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from webapp import accounts, views

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/", include(accounts.urlpatterns)),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
]
