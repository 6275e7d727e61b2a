from django.contrib import admin

from .models import CalibrationConfig, CalibrationRun, Exposure, ReferenceCatalog, RunOutput


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


@admin.register(CalibrationRun)
class CalibrationRunAdmin(admin.ModelAdmin):
    list_display = ("id", "exposure", "config", "status", "stage", "progress", "magzero", "magzero_rms",
                    "queued_at", "worker_host")
    list_filter = ("status", "config")
    readonly_fields = [f.name for f in CalibrationRun._meta.fields]
    inlines = [RunOutputInline]
