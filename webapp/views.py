"""Project-level pages: the dashboard."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from adaptation.models import Job

RECENT_JOBS = 10


@login_required
def home(request):
    jobs = (Job.objects.filter(owner=request.user)
            .select_related("model", "dataset", "device")
            .order_by("-created")[:RECENT_JOBS])
    return render(request, "home.html", {"jobs": jobs})
