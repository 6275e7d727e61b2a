from django.contrib import admin

from .models import CalibrationConfig, CalibrationRun, Exposure, ReferenceCatalog, ReviewEvent, RunOutput


@admin.register(Exposure)
class ExposureAdmin(admin.ModelAdmin):
    list_display = ("id", "original_filename", "instrument", "filter_name", "exptime_s", "date_obs", "has_wcs",
                    "uploaded_by", "uploaded_at")
    list_filter = ("instrument", "filter_name", "has_wcs")
    search_fields = ("original_filename", "object_name", "sha256")
    readonly_fields = ("sha256", "size_bytes", "uploaded_at", "header")


@admin.register(CalibrationConfig)
class CalibrationConfigAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "is_default", "is_active", "created_by", "created_at")
    list_filter = ("is_default", "is_active")
    search_fields = ("name", "description")


@admin.register(ReferenceCatalog)
class ReferenceCatalogAdmin(admin.ModelAdmin):
    list_display = ("name", "location", "bands", "epoch")


class RunOutputInline(admin.TabularInline):
    model = RunOutput
    extra = 0
    readonly_fields = ("name", "kind", "format", "file", "size_bytes", "description")


class ReviewEventInline(admin.TabularInline):
    """The run's review log, read only: reviews go through the app, which logs them."""

    model = ReviewEvent
    extra = 0
    fields = readonly_fields = ("created_at", "username", "action", "state", "previous_state", "comment")
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(CalibrationRun)
class CalibrationRunAdmin(admin.ModelAdmin):
    list_display = ("id", "exposure", "config", "status", "review_state", "stage", "progress", "magzero",
                    "magzero_rms", "queued_at", "worker_host")
    list_filter = ("status", "review_state", "config")
    list_select_related = ("exposure", "config")
    readonly_fields = [f.name for f in CalibrationRun._meta.fields]
    inlines = [RunOutputInline, ReviewEventInline]


@admin.register(ReviewEvent)
class ReviewEventAdmin(admin.ModelAdmin):
    """The review log across runs. Read only: it is an audit trail (who did what, when)."""

    list_display = ("created_at", "username", "action", "state", "previous_state", "run", "comment")
    list_filter = ("action", "state")
    search_fields = ("username", "comment", "run__id")
    date_hierarchy = "created_at"
    list_select_related = ("run",)
    readonly_fields = [f.name for f in ReviewEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
