from django.contrib import admin

from adaptation.models import Dataset, Iteration, Job, JobEvent, ModelUpload, Proposal


@admin.register(ModelUpload)
class ModelUploadAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "source", "arch", "num_classes", "resolution", "status", "created")
    list_filter = ("source", "status")
    search_fields = ("name", "arch", "owner__username")
    raw_id_fields = ("owner",)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "kind", "builtin_name", "status", "created")
    list_filter = ("kind", "status")
    search_fields = ("name", "owner__username")
    raw_id_fields = ("owner",)


class IterationInline(admin.TabularInline):
    model = Iteration
    fields = ("number", "resource", "measured_ms", "macs", "params", "holdout_accuracy", "validation_accuracy")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("pk", "kind", "owner", "model", "dataset", "device", "status", "attempts",
                    "heartbeat_at", "created")
    list_filter = ("kind", "status", "cancel_requested")
    search_fields = ("owner__username", "model__name", "claimed_by")
    raw_id_fields = ("owner", "parent", "model", "dataset", "device")
    inlines = [IterationInline]


class ProposalInline(admin.TabularInline):
    model = Proposal
    fields = ("group", "channels", "resource", "holdout_accuracy", "chosen")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Iteration)
class IterationAdmin(admin.ModelAdmin):
    list_display = ("job", "number", "resource", "resource_raw", "measured_ms", "holdout_accuracy",
                    "validation_accuracy", "created")
    raw_id_fields = ("job",)
    inlines = [ProposalInline]


@admin.register(Proposal)
class ProposalAdmin(admin.ModelAdmin):
    list_display = ("iteration", "group", "channels", "resource", "holdout_accuracy", "chosen")
    list_filter = ("chosen",)
    raw_id_fields = ("iteration",)


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ("job", "seq", "type", "created")
    list_filter = ("type",)
    raw_id_fields = ("job",)
