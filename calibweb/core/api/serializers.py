from __future__ import annotations

from rest_framework import serializers

from .. import selectors
from ..models import REVIEW_VERDICT_CHOICES, CalibrationConfig, CalibrationRun, Exposure, ReferenceCatalog, ReviewEvent, RunOutput


class ExposureSerializer(serializers.ModelSerializer):
    uploaded_by = serializers.CharField(source="uploaded_by.username", read_only=True)
    url = serializers.SerializerMethodField()
    current_run = serializers.SerializerMethodField(
        help_text="Id of the exposure's current calibration (its latest approved run), or null.")

    class Meta:
        model = Exposure
        fields = [
            "id", "url", "original_filename", "size_bytes", "sha256", "hdu_index", "instrument", "filter_name",
            "exptime_s", "date_obs", "mjd_obs", "nx", "ny", "has_wcs", "ra_deg", "dec_deg", "object_name",
            "warnings", "uploaded_by", "uploaded_at", "current_run",
        ]

    def get_url(self, obj) -> str:
        return obj.get_absolute_url()

    def get_current_run(self, obj) -> int | None:
        current = self.context.get("current_runs")  # exposure id -> run id, for a page (one query)
        if current is None:
            current = selectors.current_run_ids([obj.pk])
        return current.get(obj.pk)


class ExposureHeaderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Exposure
        fields = ["id", "header"]


class UploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A FITS image (plain, multi-extension or tile-compressed).")
    hdu = serializers.IntegerField(required=False, min_value=0, help_text="Image HDU index; default: the first with 2-D data.")


class ConfigSerializer(serializers.ModelSerializer):
    class Meta:
        model = CalibrationConfig
        fields = ["id", "name", "version", "description", "config", "is_default", "is_active", "created_at"]


class RefcatSerializer(serializers.ModelSerializer):
    class Meta:
        model = ReferenceCatalog
        fields = ["id", "name", "location", "bands", "epoch", "description"]


class OutputSerializer(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = RunOutput
        fields = ["name", "kind", "format", "size_bytes", "description", "download_url"]

    def get_download_url(self, obj) -> str:
        return f"/api/runs/{obj.run_id}/outputs/{obj.name}"


class RunSerializer(serializers.ModelSerializer):
    outputs = OutputSerializer(many=True, read_only=True)
    config_name = serializers.CharField(source="config.__str__", read_only=True, default=None)
    refcat_name = serializers.CharField(source="refcat.name", read_only=True, default=None)
    reviewed_by = serializers.CharField(source="reviewed_by.username", read_only=True, default=None)
    is_current = serializers.SerializerMethodField(
        help_text="Whether this run is its exposure's current calibration (the latest approved run).")

    class Meta:
        model = CalibrationRun
        fields = [
            "id", "exposure", "config", "config_name", "config_snapshot", "refcat", "refcat_name", "status",
            "stage", "progress", "celery_task_id", "queued_at", "started_at", "finished_at", "worker_host",
            "error_stage", "error_type", "error_message", "engine_version", "magzero", "magzero_rms",
            "magzero_nobj", "colorterm1", "colorterm2", "colorterm3", "photom_scatter_mag",
            "astrom_offset_mean_arcsec", "astrom_offset_std_arcsec", "n_sources", "n_astrom_matches",
            "n_photom_matches", "psf_fwhm_pix", "sky_noise_adu", "background_adu", "wcs_header", "timings",
            "metadata", "warnings", "outputs", "review_state", "reviewed_by", "reviewed_at", "is_current",
        ]
        read_only_fields = fields

    def get_is_current(self, obj) -> bool:
        if not hasattr(obj, "is_current"):
            selectors.mark_current([obj])
        return obj.is_current


class RunCreateSerializer(serializers.Serializer):
    exposure = serializers.IntegerField(help_text="Exposure id.")
    config = serializers.IntegerField(required=False, help_text="Configuration id; default configuration when absent.")
    refcat = serializers.IntegerField(required=False, allow_null=True, help_text="Reference catalogue id.")


class ReviewEventSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="username", read_only=True)

    class Meta:
        model = ReviewEvent
        fields = ["id", "run", "user", "action", "state", "previous_state", "comment", "created_at"]
        read_only_fields = fields


class ReviewSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=REVIEW_VERDICT_CHOICES,
                                    help_text="The verdict: approved, rejected or needs_attention.")
    comment = serializers.CharField(required=False, allow_blank=True, default="", help_text="Why (optional).")


class CommentSerializer(serializers.Serializer):
    comment = serializers.CharField(help_text="Text of the comment.")
