"""JSON API: thin views over services and selectors (token or session auth)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors, services
from ..models import CalibrationConfig, ReferenceCatalog, ReviewEvent, ReviewState
from ..selectors import configs_available, exposures_visible, refcats_available, runs_visible
from .serializers import (
    CommentSerializer,
    ConfigSerializer,
    ExposureHeaderSerializer,
    ExposureSerializer,
    RefcatSerializer,
    ReviewEventSerializer,
    ReviewSerializer,
    RunCreateSerializer,
    RunSerializer,
    UploadSerializer,
)


class ExposureListCreate(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(responses=ExposureSerializer(many=True))
    def get(self, request):
        qs = exposures_visible(request.user)
        page = generics.GenericAPIView.pagination_class()
        items = page.paginate_queryset(qs, request, view=self)
        current = selectors.current_run_ids(e.pk for e in items)
        return page.get_paginated_response(ExposureSerializer(items, many=True, context={"current_runs": current}).data)

    @extend_schema(request=UploadSerializer, responses={201: ExposureSerializer, 200: ExposureSerializer})
    def post(self, request):
        form = UploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        outcome = services.exposure_create(
            user=request.user, uploaded_file=form.validated_data["file"], hdu=form.validated_data.get("hdu")
        )
        code = status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK
        return Response(ExposureSerializer(outcome.exposure).data, status=code)


class ExposureDetail(generics.RetrieveAPIView):
    serializer_class = ExposureSerializer

    def get_queryset(self):
        return exposures_visible(self.request.user)


class ExposureHeader(generics.RetrieveAPIView):
    serializer_class = ExposureHeaderSerializer

    def get_queryset(self):
        return exposures_visible(self.request.user)


class RunListCreate(APIView):
    @extend_schema(responses=RunSerializer(many=True))
    def get(self, request):
        qs = runs_visible(request.user).prefetch_related("outputs")
        if request.query_params.get("status"):
            qs = qs.filter(status=request.query_params["status"])
        if request.query_params.get("exposure"):
            qs = qs.filter(exposure_id=request.query_params["exposure"])
        if request.query_params.get("review_state"):
            if request.query_params["review_state"] not in ReviewState.values:
                raise ValidationError(f"Unknown review_state: choose one of {', '.join(ReviewState.values)}.")
            qs = qs.filter(review_state=request.query_params["review_state"])
        page = generics.GenericAPIView.pagination_class()
        items = selectors.mark_current(page.paginate_queryset(qs, request, view=self))
        return page.get_paginated_response(RunSerializer(items, many=True).data)

    @extend_schema(request=RunCreateSerializer, responses={201: RunSerializer})
    def post(self, request):
        form = RunCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        exposure = get_object_or_404(exposures_visible(request.user), pk=data["exposure"])
        config = get_object_or_404(configs_available(), pk=data["config"]) if data.get("config") else None
        refcat = get_object_or_404(refcats_available(), pk=data["refcat"]) if data.get("refcat") else None
        run = services.run_create(user=request.user, exposure=exposure, config=config, refcat=refcat)
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)


class RunDetail(generics.RetrieveAPIView):
    serializer_class = RunSerializer

    def get_queryset(self):
        return runs_visible(self.request.user).prefetch_related("outputs")


class RunCancel(APIView):
    @extend_schema(request=None, responses=RunSerializer)
    def post(self, request, pk: int):
        run = get_object_or_404(runs_visible(request.user), pk=pk)
        cancelled = services.run_cancel(run=run, user=request.user)
        if not cancelled:
            return Response({"detail": f"Run {run.pk} had already ended ({run.status})."}, status=status.HTTP_409_CONFLICT)
        return Response(RunSerializer(run).data)


class RunReview(APIView):
    """Set the run's review state (reviewers and staff only: others get a 403)."""

    @extend_schema(request=ReviewSerializer, responses={201: ReviewEventSerializer})
    def post(self, request, pk: int):
        run = get_object_or_404(runs_visible(request.user), pk=pk)
        form = ReviewSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        event = services.review_run(user=request.user, run=run, state=form.validated_data["state"],
                                    comment=form.validated_data["comment"])
        return Response(ReviewEventSerializer(event).data, status=status.HTTP_201_CREATED)


class RunReviews(generics.ListAPIView):
    """The run's review log and comment thread, oldest first; POST a comment (anyone who sees the run)."""

    serializer_class = ReviewEventSerializer
    queryset = ReviewEvent.objects.none()

    def _run(self):
        return get_object_or_404(runs_visible(self.request.user), pk=self.kwargs["pk"])

    def get_queryset(self):
        return selectors.review_events(self._run())

    @extend_schema(request=CommentSerializer, responses={201: ReviewEventSerializer})
    def post(self, request, pk: int):
        form = CommentSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        event = services.comment_on_run(user=request.user, run=self._run(), text=form.validated_data["comment"])
        return Response(ReviewEventSerializer(event).data, status=status.HTTP_201_CREATED)


class RunOutputDownload(APIView):
    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request, pk: int, name: str):
        run = get_object_or_404(runs_visible(request.user), pk=pk)
        output = get_object_or_404(run.outputs, name=name)
        return FileResponse(output.file.open("rb"), as_attachment=True, filename=f"run{run.pk}_{output.name}")


class ConfigList(generics.ListAPIView):
    serializer_class = ConfigSerializer
    queryset = CalibrationConfig.objects.none()

    def get_queryset(self):
        return configs_available()


class RefcatList(generics.ListAPIView):
    serializer_class = RefcatSerializer
    queryset = ReferenceCatalog.objects.none()

    def get_queryset(self):
        return refcats_available()
