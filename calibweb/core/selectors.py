"""Reads: what a user may see."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from .models import CalibrationConfig, CalibrationRun, Exposure, ReferenceCatalog


def _visible_q(user, field: str) -> Q:
    """Rows owned by ``user`` or by someone sharing one of their groups."""
    if user.is_superuser:
        return Q()
    group_ids = list(user.groups.values_list("pk", flat=True))
    q = Q(**{field: user})
    if group_ids:
        q |= Q(**{f"{field}__groups__in": group_ids})
    return q


def exposures_visible(user) -> QuerySet[Exposure]:
    qs = Exposure.objects.select_related("uploaded_by")
    if user.is_superuser:
        return qs
    ids = Exposure.objects.filter(_visible_q(user, "uploaded_by")).values("pk")
    return qs.filter(pk__in=ids)


def runs_visible(user) -> QuerySet[CalibrationRun]:
    qs = CalibrationRun.objects.select_related("exposure", "config", "refcat", "created_by")
    if user.is_superuser:
        return qs
    return qs.filter(exposure__in=exposures_visible(user).values("pk"))


def configs_available() -> QuerySet[CalibrationConfig]:
    return CalibrationConfig.objects.filter(is_active=True).order_by("-is_default", "name", "-version")


def refcats_available() -> QuerySet[ReferenceCatalog]:
    return ReferenceCatalog.objects.all()
