"""URLs of the job pages (included at /jobs/)."""
from django.urls import path

from adaptation import views_jobs

urlpatterns = [
    path("", views_jobs.job_list, name="job_list"),
    path("new/", views_jobs.job_create, name="job_create"),
    path("<int:job_id>/", views_jobs.job_detail, name="job_detail"),
    path("<int:job_id>/cancel/", views_jobs.job_cancel, name="job_cancel"),
    path("<int:job_id>/iterations/<int:number>/finetune/", views_jobs.job_finetune, name="job_finetune"),
    path("<int:job_id>/baseline/", views_jobs.job_baseline, name="job_baseline"),
    path("<int:job_id>/download/<int:number>/<str:fmt>/", views_jobs.job_download, name="job_download"),
    path("<int:job_id>/download/final/<str:fmt>/", views_jobs.job_download, name="job_download_final"),
    path("<int:job_id>/report.<str:fmt>", views_jobs.job_report, name="job_report"),
]
