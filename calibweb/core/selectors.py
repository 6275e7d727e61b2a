"""Reads: what a user may see, and the queries of the history pages.

Visibility: a user sees the exposures they uploaded and those uploaded by the
members of their *teams* (their groups other than the role groups
``reviewers`` and ``viewers``, which give rights, not data); a superuser sees
everything. A run is visible when its exposure is.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence

import numpy as np
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import F, Q, QuerySet

from .models import (
    REVIEWERS_GROUP,
    ROLE_GROUPS,
    VIEWERS_GROUP,
    CalibrationConfig,
    CalibrationRun,
    Exposure,
    ReferenceCatalog,
    ReviewEvent,
    ReviewState,
    RunStatus,
)

# --------------------------------------------------------------------------- visibility


def team_groups(user) -> QuerySet[Group]:
    """The user's groups that share data (every group except the role groups)."""
    return user.groups.exclude(name__in=ROLE_GROUPS)


def visible_uploader_ids(user) -> list[int]:
    """Ids of the users whose exposures ``user`` sees: themself and their team mates.

    Fetched first (one small query) and passed to the big queries as a list of
    constants, so that the database sees how selective it is and answers the
    runs list from indexes (``exposure_owner_idx``) rather than a subquery per row.
    """
    User = get_user_model()
    team = team_groups(user).values("pk")
    return sorted(set(User.objects.filter(Q(pk=user.pk) | Q(groups__in=team)).values_list("pk", flat=True)))


def exposures_visible(user) -> QuerySet[Exposure]:
    qs = Exposure.objects.select_related("uploaded_by")
    if user.is_superuser:
        return qs
    return qs.filter(uploaded_by_id__in=visible_uploader_ids(user))


def runs_visible(user) -> QuerySet[CalibrationRun]:
    qs = CalibrationRun.objects.select_related("exposure", "config", "refcat", "created_by")
    if user.is_superuser:
        return qs
    return qs.filter(exposure__uploaded_by_id__in=visible_uploader_ids(user))


def configs_available() -> QuerySet[CalibrationConfig]:
    return CalibrationConfig.objects.filter(is_active=True).order_by("-is_default", "name", "-version")


def refcats_available() -> QuerySet[ReferenceCatalog]:
    return ReferenceCatalog.objects.all()


# ------------------------------------------------------------------------------ review


def can_review(user) -> bool:
    """Reviewers (group ``reviewers``) and staff may set a run's review state; everyone else only looks."""
    if not (user.is_authenticated and user.is_active):
        return False
    return user.is_staff or user.is_superuser or user.groups.filter(name=REVIEWERS_GROUP).exists()


def can_submit(user) -> bool:
    """Everyone but a plain viewer may upload exposures and start runs: viewers only look."""
    if not (user.is_authenticated and user.is_active):
        return False
    if user.is_staff or user.is_superuser:
        return True
    groups = set(user.groups.values_list("name", flat=True))
    return VIEWERS_GROUP not in groups or REVIEWERS_GROUP in groups


def review_events(run: CalibrationRun) -> QuerySet[ReviewEvent]:
    """The run's review log and comment thread, oldest first."""
    return run.review_events.select_related("user").order_by("created_at", "id")


def _current_candidates() -> QuerySet[CalibrationRun]:
    return CalibrationRun.objects.filter(review_state=ReviewState.APPROVED, status=RunStatus.SUCCEEDED)


def current_run(exposure: Exposure) -> CalibrationRun | None:
    """The exposure's *current calibration*: its latest approved run.

    "Latest" is the run queued last (then the higher id), so a newer
    calibration, once approved, takes over; rejecting it (or flagging it)
    hands the title back to the previous approved run.
    """
    return _current_candidates().filter(exposure=exposure).order_by("-queued_at", "-id").first()


def current_run_ids(exposure_ids: Iterable[int]) -> dict[int, int]:
    """``exposure id -> id of its current run`` for the given exposures (one query; those without are absent)."""
    ids = list(set(exposure_ids))
    if not ids:
        return {}
    out: dict[int, int] = {}
    rows = (_current_candidates().filter(exposure_id__in=ids).order_by("exposure_id", "-queued_at", "-id")
            .values_list("exposure_id", "id"))
    for exposure_id, run_id in rows:
        out.setdefault(exposure_id, run_id)
    return out


def mark_current(runs: Sequence[CalibrationRun]) -> Sequence[CalibrationRun]:
    """Set ``run.is_current`` on each run (one query for all of them); returns ``runs``."""
    current = current_run_ids(r.exposure_id for r in runs)
    for run in runs:
        run.is_current = current.get(run.exposure_id) == run.pk
    return runs


# --------------------------------------------------------------------------- runs list

#: Columns the runs list may be sorted by: URL key -> order (a descending sort reverses each
#: part). Every order ends with the id so that pages never overlap.
SORTS: dict[str, tuple[str, ...]] = {
    "queued": ("queued_at", "id"),
    "id": ("id",),
    "date_obs": ("exposure__date_obs", "id"),
    "instrument": ("exposure__instrument", "exposure__filter_name", "exposure__date_obs", "id"),
    "status": ("status", "queued_at", "id"),
    "review": ("review_state", "queued_at", "id"),
    "magzero": ("magzero", "id"),
    "magzero_rms": ("magzero_rms", "id"),
    "astrom_std": ("astrom_offset_std_arcsec", "id"),
    "fwhm": ("psf_fwhm_pix", "id"),
}
DEFAULT_SORT = "-queued"
#: Result columns, missing for runs that did not succeed: those rows go last in both directions,
#: as on every database. (Not the indexed columns: ``DESC NULLS LAST`` would not use their index.)
NULLS_LAST = frozenset({"magzero", "magzero_rms", "astrom_offset_std_arcsec", "psf_fwhm_pix"})

#: Large columns of a run that lists never show (kept out of the SELECT).
RUN_LIST_DEFERRED = ("config_snapshot", "metadata", "timings", "wcs_header", "warnings")
#: The same with the large columns of the related rows (for querysets from :func:`runs_visible`).
LIST_DEFERRED = (*RUN_LIST_DEFERRED, "exposure__header", "exposure__warnings", "config__config",
                 "config__description")


@dataclasses.dataclass(frozen=True)
class RunFilters:
    """Filters shared by the runs list, the trends and their CSV (empty = no filter).

    ``date_from`` and ``date_to`` are observation dates (UTC), both inclusive.
    """

    instrument: str = ""
    filter_name: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    status: str = ""
    review_state: str = ""
    config_id: int | None = None
    user_id: int | None = None
    exposure_id: int | None = None

    def without_dates(self) -> "RunFilters":
        return dataclasses.replace(self, date_from=None, date_to=None)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


def filter_runs(qs: QuerySet[CalibrationRun], filters: RunFilters) -> QuerySet[CalibrationRun]:
    """``qs`` narrowed by every filter that is set."""
    f = filters
    if f.instrument:
        qs = qs.filter(exposure__instrument=f.instrument)
    if f.filter_name:
        qs = qs.filter(exposure__filter_name=f.filter_name)
    if f.date_from:
        qs = qs.filter(exposure__date_obs__gte=_midnight(f.date_from))
    if f.date_to:
        qs = qs.filter(exposure__date_obs__lt=_midnight(f.date_to + dt.timedelta(days=1)))
    if f.status:
        qs = qs.filter(status=f.status)
    if f.review_state:
        qs = qs.filter(review_state=f.review_state)
    if f.config_id:
        qs = qs.filter(config_id=f.config_id)
    if f.user_id:
        qs = qs.filter(created_by_id=f.user_id)
    if f.exposure_id:
        qs = qs.filter(exposure_id=f.exposure_id)
    return qs


def sort_order(sort: str) -> list:
    """ORDER BY of a whitelisted sort key (``"magzero"``, ``"-date_obs"``...); unknown keys take the default."""
    key = sort.lstrip("-")
    if key not in SORTS:
        return sort_order(DEFAULT_SORT)
    descending = sort.startswith("-")
    order = []
    for name in SORTS[key]:
        nulls = {"nulls_last": True} if name in NULLS_LAST else {}
        order.append(F(name).desc(**nulls) if descending else F(name).asc(**nulls))
    return order


def runs_for_list(user, filters: RunFilters, *, sort: str = DEFAULT_SORT) -> QuerySet[CalibrationRun]:
    """The runs list: visible runs, filtered and sorted, without the large columns."""
    return filter_runs(runs_visible(user), filters).defer(*LIST_DEFERRED).order_by(*sort_order(sort))


@dataclasses.dataclass(frozen=True)
class FilterChoices:
    """What the filter form offers: only values present in the user's visible data."""

    instruments: list[str]
    filter_names: list[str]
    configs: list[CalibrationConfig]
    users: list


def filter_choices(user) -> FilterChoices:
    """Instruments and filters of the visible exposures; configurations; the people of the user's teams."""
    pairs = list(exposures_visible(user).order_by().values_list("instrument", "filter_name").distinct())
    User = get_user_model()
    users = User.objects.order_by("username").only("pk", "username")
    if not user.is_superuser:
        users = users.filter(pk__in=visible_uploader_ids(user))
    return FilterChoices(
        instruments=sorted({i for i, _ in pairs if i}),
        filter_names=sorted({f for _, f in pairs if f}),
        configs=list(CalibrationConfig.objects.order_by("name", "-version").only("pk", "name", "version")),
        users=list(users),
    )


# ------------------------------------------------------------------------------ trends

#: Columns of a trend table (see :func:`trend_rows`).
TREND_FIELDS = {
    "run_id": "id", "exposure_id": "exposure_id", "date_obs": "exposure__date_obs",
    "instrument": "exposure__instrument", "filter_name": "exposure__filter_name", "review_state": "review_state",
    "magzero": "magzero", "magzero_rms": "magzero_rms", "astrom_offset_std_arcsec": "astrom_offset_std_arcsec",
    "psf_fwhm_pix": "psf_fwhm_pix",
}
_FLOAT_FIELDS = ("magzero", "magzero_rms", "astrom_offset_std_arcsec", "psf_fwhm_pix")


def _trend_base(user, filters: RunFilters) -> QuerySet[CalibrationRun]:
    """Succeeded visible runs with an observation date, filtered (the status filter is replaced)."""
    f = dataclasses.replace(filters, status=RunStatus.SUCCEEDED)
    return filter_runs(runs_visible(user), f).filter(exposure__date_obs__isnull=False).order_by()


def _columns(rows: list[tuple]) -> dict[str, np.ndarray]:
    names = list(TREND_FIELDS)
    cols = list(zip(*rows)) if rows else [() for _ in names]
    out: dict[str, np.ndarray] = {}
    for name, values in zip(names, cols):
        if name in _FLOAT_FIELDS:
            out[name] = np.array([np.nan if v is None else v for v in values], dtype=float)
        elif name in ("run_id", "exposure_id"):
            out[name] = np.array(values, dtype=np.int64)
        elif name == "date_obs":
            out[name] = np.array([v.replace(tzinfo=None) for v in values], dtype="datetime64[ms]")
        else:
            out[name] = np.array(values, dtype=object).astype(str) if values else np.array([], dtype=str)
    return out


@dataclasses.dataclass(frozen=True)
class TrendRows:
    """Succeeded runs for the trend plots, in observation order.

    ``shown``: the runs to plot (the most recent ``limit`` of the selection);
    ``history``: up to ``history`` earlier runs of each instrument + filter
    before the first shown one (same filters, any date), which the outlier
    test uses as the "previous runs" of the first points; ``total``: how many
    runs the selection has in all.
    """

    shown: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    total: int


def trend_rows(user, filters: RunFilters, *, limit: int, history: int) -> TrendRows:
    base = _trend_base(user, filters)
    fields = list(TREND_FIELDS.values())
    total = base.count()
    recent = list(base.order_by("-exposure__date_obs", "-id").values_list(*fields)[:limit])
    recent.reverse()
    shown = _columns(recent)
    earlier: list[tuple] = []
    if history > 0 and len(recent):
        # For each instrument + filter shown, the runs just before its first shown one.
        undated = _trend_base(user, filters.without_dates())
        firsts: dict[tuple[str, str], tuple] = {}
        for row in recent:
            firsts.setdefault((row[3], row[4]), row)
        for (instrument, filter_name), first in firsts.items():
            date, run_id = first[2], first[0]
            before = (undated.filter(exposure__instrument=instrument, exposure__filter_name=filter_name)
                      .filter(Q(exposure__date_obs__lt=date) | Q(exposure__date_obs=date, id__lt=run_id))
                      .order_by("-exposure__date_obs", "-id").values_list(*fields)[:history])
            earlier.extend(reversed(list(before)))
    return TrendRows(shown=shown, history=_columns(earlier), total=total)


# -------------------------------------------------------------------------- comparison


def runs_for_comparison(user, ids: Sequence[int]) -> list[CalibrationRun]:
    """The visible runs of ``ids`` in that order (with their outputs); those not visible are left out."""
    runs = {r.pk: r for r in runs_visible(user).filter(pk__in=ids).prefetch_related("outputs")}
    return [runs[i] for i in ids if i in runs]
