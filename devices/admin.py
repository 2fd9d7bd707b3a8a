from django.contrib import admin

from devices.models import Device, LatencyEntry


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "kind", "runtime", "threads", "status", "last_seen", "created")
    list_filter = ("kind", "runtime", "status")
    search_fields = ("name", "owner__username")
    raw_id_fields = ("owner",)


@admin.register(LatencyEntry)
class LatencyEntryAdmin(admin.ModelAdmin):
    list_display = ("signature_key", "device", "runtime", "runtime_version", "threads", "n",
                    "min_ms", "median_ms", "measured_at")
    list_filter = ("runtime", "threads")
    search_fields = ("signature_key",)
    raw_id_fields = ("device",)
