"""URL configuration. Uploaded files and job outputs are never served from MEDIA_URL: downloads
go through views that check ownership."""
from django.contrib import admin
from django.urls import include, path

from devices import agent_views
from webapp import views
from webapp.lib import accounts

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/", include(accounts.urlpatterns)),
    path("admin/", admin.site.urls),
    path("api/v1/", include("webapp.api_urls")),
    path("devices/agent.pyz", agent_views.agent_download, name="agent_download"),
    path("models/", include("adaptation.urls_models")),
    path("datasets/", include("adaptation.urls_datasets")),
    path("devices/measurements/", include("adaptation.urls_measure")),  # "Measure on...": models, jobs
    path("devices/", include("devices.urls")),
    path("jobs/", include("adaptation.urls_jobs")),
]
