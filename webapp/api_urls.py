"""URLs of the REST API (included at /api/v1/); docs/api.md describes every endpoint."""
from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView

from adaptation import api as adaptation_api
from adaptation import api_jobs, api_measure
from devices import agent_views
from devices import api as devices_api
from webapp.lib.api import TokenRotate, TokenView

urlpatterns = [
    path("token", TokenView.as_view(), name="api-token"),
    path("token/rotate", TokenRotate.as_view(), name="api-token-rotate"),
    path("schema", SpectacularAPIView.as_view(), name="api-schema"),
    path("models", adaptation_api.ModelList.as_view(), name="api-model-list"),
    path("models/<int:id>", adaptation_api.ModelDetail.as_view(), name="api-model-detail"),
    path("datasets", adaptation_api.DatasetList.as_view(), name="api-dataset-list"),
    path("datasets/<int:id>", adaptation_api.DatasetDetail.as_view(), name="api-dataset-detail"),
    path("devices", devices_api.DeviceList.as_view(), name="api-device-list"),
    path("devices/<int:id>", devices_api.DeviceDetail.as_view(), name="api-device-detail"),
    path("devices/<int:id>/lut", devices_api.DeviceLut.as_view(), name="api-device-lut"),
    path("devices/<int:id>/measure", api_measure.MeasureStart.as_view(), name="api-device-measure"),
    path("measurements/<int:id>", api_measure.MeasurementDetail.as_view(), name="api-measurement-detail"),
    path("measurements/<int:id>/cancel", api_measure.MeasurementCancel.as_view(), name="api-measurement-cancel"),
    # The agent program's endpoints (device token, not a user's): devices/agent_views.py.
    path("agent/pair", agent_views.pair, name="api-agent-pair"),
    path("agent/requests/<int:id>/files", agent_views.request_files, name="api-agent-request-files"),
    path("jobs", api_jobs.JobList.as_view(), name="api-job-list"),
    path("jobs/<int:id>", api_jobs.JobDetail.as_view(), name="api-job-detail"),
    path("jobs/<int:id>/cancel", api_jobs.JobCancel.as_view(), name="api-job-cancel"),
    # Iteration -1 is the original network: the number may be negative.
    re_path(r"^jobs/(?P<id>[0-9]+)/iterations/(?P<number>-?[0-9]+)/download$",
            api_jobs.IterationDownload.as_view(), name="api-job-download"),
    path("jobs/<int:id>/report", api_jobs.JobReport.as_view(), name="api-job-report"),
]
