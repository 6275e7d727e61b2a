"""Team review: who may review (reviewers, staff) and who may only look (viewers, others),
the review log and comment thread, the current calibration (latest approved run), the API."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from calibweb.core import selectors, services
from calibweb.core.models import ReviewAction, ReviewEvent, ReviewState, RunStatus
from factories import make_exposure, make_run

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc


@pytest.fixture
def team(django_user_model, user):
    """alice (the owner, no role), rita (reviewer) and victor (viewer) in one team."""
    reviewers, _ = Group.objects.get_or_create(name="reviewers")
    viewers, _ = Group.objects.get_or_create(name="viewers")
    team = Group.objects.create(name="team-a")
    rita = django_user_model.objects.create_user("rita", password="pw-rita-123")
    victor = django_user_model.objects.create_user("victor", password="pw-victor-123")
    for member in (user, rita, victor):
        member.groups.add(team)
    rita.groups.add(reviewers)
    victor.groups.add(viewers)
    return {"owner": user, "reviewer": rita, "viewer": victor, "reviewers": reviewers}


@pytest.fixture
def run(team):
    return make_run(make_exposure(team["owner"]))


@pytest.fixture
def outsider(django_user_model, team):
    """A reviewer of another team: the role group does not share data."""
    olga = django_user_model.objects.create_user("olga", password="pw-olga-123")
    olga.groups.add(team["reviewers"])
    return olga


def test_role_groups_exist_after_migrating():
    assert set(Group.objects.filter(name__in=["reviewers", "viewers"]).values_list("name", flat=True)) == {
        "reviewers", "viewers"}


def test_reviewer_approves_with_a_comment_and_the_event_is_logged(client, team, run):
    rita = team["reviewer"]
    client.force_login(rita)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="review-form"' in page and 'value="approved"' in page
    before = dt.datetime.now(UTC)
    response = client.post(f"/runs/{run.pk}/review/", {"state": "approved", "comment": "zero point checked"})
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.review_state == ReviewState.APPROVED and run.reviewed_by == rita and run.reviewed_at >= before
    event = ReviewEvent.objects.get(run=run)
    assert (event.user, event.username, event.action, event.state, event.previous_state, event.comment) == (
        rita, "rita", ReviewAction.REVIEW, "approved", "unreviewed", "zero point checked")
    assert event.created_at >= before
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert f'id="review-event-{event.pk}"' in page and "zero point checked" in page and "rita" in page


def test_every_review_action_is_logged_in_order(team, run):
    rita = team["reviewer"]
    services.review_run(user=rita, run=run, state=ReviewState.NEEDS_ATTENTION, comment="PSF looks odd")
    services.comment_on_run(user=team["owner"], run=run, text="re-ran with a larger stamp")
    services.review_run(user=rita, run=run, state=ReviewState.APPROVED)
    events = list(selectors.review_events(run))
    assert [(e.username, e.action, e.state, e.previous_state) for e in events] == [
        ("rita", "review", "needs_attention", "unreviewed"),
        ("alice", "comment", "", ""),
        ("rita", "review", "approved", "needs_attention"),
    ]
    run.refresh_from_db()
    assert run.review_state == ReviewState.APPROVED


def test_viewer_can_look_and_comment_but_not_review(client, team, run):
    victor = team["viewer"]
    client.force_login(victor)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="review-form"' not in page and 'id="review-not-allowed"' in page and 'id="comment-form"' in page
    response = client.post(f"/runs/{run.pk}/review/", {"state": "approved"})
    assert response.status_code == 403
    run.refresh_from_db()
    assert run.review_state == ReviewState.UNREVIEWED and not ReviewEvent.objects.exists()
    assert client.post(f"/runs/{run.pk}/comment/", {"text": "looks fine to me"}).status_code == 302
    event = ReviewEvent.objects.get()
    assert (event.action, event.username, event.comment) == ("comment", "victor", "looks fine to me")


def test_a_user_in_no_role_group_only_looks(client, team, run):
    client.force_login(team["owner"])
    assert client.post(f"/runs/{run.pk}/review/", {"state": "rejected"}).status_code == 403


def test_service_refuses_non_reviewers_with_a_clear_message(team, run):
    with pytest.raises(PermissionDenied, match="'reviewers' group"):
        services.review_run(user=team["viewer"], run=run, state=ReviewState.APPROVED)
    assert not ReviewEvent.objects.exists()


def test_staff_may_review(client, django_user_model, team, run):
    staff = django_user_model.objects.create_user("sam", password="pw-sam-12345", is_staff=True)
    staff.groups.add(Group.objects.get(name="team-a"))
    client.force_login(staff)
    assert client.post(f"/runs/{run.pk}/review/", {"state": "rejected", "comment": "wrong filter"}).status_code == 302
    run.refresh_from_db()
    assert run.review_state == ReviewState.REJECTED


def test_a_reviewer_of_another_team_cannot_see_or_review(client, outsider, run):
    client.force_login(outsider)
    assert client.get(f"/runs/{run.pk}/").status_code == 404
    assert client.post(f"/runs/{run.pk}/review/", {"state": "approved"}).status_code == 404
    assert client.post(f"/runs/{run.pk}/comment/", {"text": "hello"}).status_code == 404
    with pytest.raises(PermissionDenied, match="not visible"):
        services.review_run(user=outsider, run=run, state=ReviewState.APPROVED)
    with pytest.raises(PermissionDenied):
        services.comment_on_run(user=outsider, run=run, text="hello")
    assert not ReviewEvent.objects.exists()


@pytest.mark.parametrize(("status", "state", "message"), [
    (RunStatus.FAILED, ReviewState.APPROVED, "only a succeeded run can be approved"),
    (RunStatus.RUNNING, ReviewState.REJECTED, "review it once it has ended"),
    (RunStatus.SUCCEEDED, "unreviewed", "Unknown review state"),
    (RunStatus.SUCCEEDED, "great", "Unknown review state"),
])
def test_reviews_that_make_no_sense_are_refused(team, status, state, message):
    run = make_run(make_exposure(team["owner"]), status=status)
    with pytest.raises(ValidationError, match=message):
        services.review_run(user=team["reviewer"], run=run, state=state)
    assert not ReviewEvent.objects.exists()


def test_a_failed_run_can_be_rejected(team):
    run = make_run(make_exposure(team["owner"]), status=RunStatus.FAILED)
    services.review_run(user=team["reviewer"], run=run, state=ReviewState.REJECTED, comment="bad flat")
    run.refresh_from_db()
    assert run.review_state == ReviewState.REJECTED


def test_empty_or_overlong_comments_are_refused(team, run):
    with pytest.raises(ValidationError, match="empty"):
        services.comment_on_run(user=team["viewer"], run=run, text="   ")
    with pytest.raises(ValidationError, match="limit"):
        services.comment_on_run(user=team["viewer"], run=run, text="x" * (services.MAX_COMMENT_CHARS + 1))


def test_comments_are_escaped(client, team, run):
    services.comment_on_run(user=team["viewer"], run=run, text='<script>alert("x")</script>\nsecond line')
    client.force_login(team["owner"])
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "<script>alert(" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;<br>second line" in page


def test_current_calibration_is_the_latest_approved_run(client, team):
    owner, rita = team["owner"], team["reviewer"]
    exposure = make_exposure(owner)
    t0 = dt.datetime(2026, 3, 1, tzinfo=UTC)
    first = make_run(exposure, queued_at=t0, magzero=25.01)
    second = make_run(exposure, queued_at=t0 + dt.timedelta(hours=1), magzero=25.02)
    newest = make_run(exposure, queued_at=t0 + dt.timedelta(hours=2), magzero=25.03)
    failed = make_run(exposure, queued_at=t0 + dt.timedelta(hours=3), status=RunStatus.FAILED)
    assert selectors.current_run(exposure) is None
    services.review_run(user=rita, run=second, state=ReviewState.APPROVED)
    services.review_run(user=rita, run=first, state=ReviewState.APPROVED)  # approved later, but older
    services.review_run(user=rita, run=failed, state=ReviewState.REJECTED)
    assert selectors.current_run(exposure) == second  # newest is unreviewed
    services.review_run(user=rita, run=newest, state=ReviewState.APPROVED)
    assert selectors.current_run(exposure) == newest
    services.review_run(user=rita, run=newest, state=ReviewState.NEEDS_ATTENTION)
    assert selectors.current_run(exposure) == second
    assert selectors.current_run_ids([exposure.pk]) == {exposure.pk: second.pk}

    client.force_login(owner)
    page = client.get(f"/exposures/{exposure.pk}/").content.decode()
    assert f'Current calibration: <a href="/runs/{second.pk}/">run #{second.pk}</a>' in page
    assert 'id="current-badge"' in client.get(f"/runs/{second.pk}/").content.decode()
    assert 'id="current-badge"' not in client.get(f"/runs/{first.pk}/").content.decode()


def test_run_list_shows_the_review_state_and_the_current_run(client, team, run):
    services.review_run(user=team["reviewer"], run=run, state=ReviewState.APPROVED)
    other = make_run(make_exposure(team["owner"]))
    services.review_run(user=team["reviewer"], run=other, state=ReviewState.NEEDS_ATTENTION)
    client.force_login(team["viewer"])
    page = client.get("/runs/").content.decode()
    row = page.split(f'id="run-row-{run.pk}"')[1].split("</tr>")[0]
    assert 'class="review review-approved">Approved</span>' in row and 'class="current"' in row
    row = page.split(f'id="run-row-{other.pk}"')[1].split("</tr>")[0]
    assert "Needs attention" in row and 'class="current"' not in row


# ------------------------------------------------------------------------------- API


def api_for(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def test_api_review_current_run_and_thread(team, run):
    rita = api_for(team["reviewer"])
    response = rita.post(f"/api/runs/{run.pk}/review/", {"state": "approved", "comment": "ok"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["state"] == "approved" and response.json()["user"] == "rita"
    body = rita.get(f"/api/runs/{run.pk}/").json()
    assert body["review_state"] == "approved" and body["reviewed_by"] == "rita" and body["is_current"] is True
    assert rita.get(f"/api/exposures/{run.exposure_id}/").json()["current_run"] == run.pk
    listed = rita.get("/api/exposures/").json()["results"]
    assert [e["current_run"] for e in listed if e["id"] == run.exposure_id] == [run.pk]
    runs = rita.get("/api/runs/", {"review_state": "approved"}).json()["results"]
    assert [(r["id"], r["is_current"]) for r in runs] == [(run.pk, True)]
    assert rita.get("/api/runs/", {"review_state": "bogus"}).status_code == 400

    victor = api_for(team["viewer"])
    response = victor.post(f"/api/runs/{run.pk}/review/", {"state": "rejected"}, format="json")
    assert response.status_code == 403 and "reviewers" in response.json()["detail"]
    response = victor.post(f"/api/runs/{run.pk}/reviews/", {"comment": "agreed"}, format="json")
    assert response.status_code == 201 and response.json()["action"] == "comment"
    thread = victor.get(f"/api/runs/{run.pk}/reviews/").json()
    assert [(e["user"], e["action"], e["state"], e["comment"]) for e in thread["results"]] == [
        ("rita", "review", "approved", "ok"), ("victor", "comment", "", "agreed")]


def test_api_refuses_bad_states_and_hides_other_teams_runs(team, run, outsider):
    rita = api_for(team["reviewer"])
    response = rita.post(f"/api/runs/{run.pk}/review/", {"state": "great"}, format="json")
    assert response.status_code == 400 and "state" in response.json()
    olga = api_for(outsider)
    assert olga.post(f"/api/runs/{run.pk}/review/", {"state": "approved"}, format="json").status_code == 404
    assert olga.get(f"/api/runs/{run.pk}/reviews/").status_code == 404


def test_run_without_approval_is_not_current_in_the_api(team, run):
    api = api_for(team["owner"])
    body = api.get(f"/api/runs/{run.pk}/").json()
    assert body["review_state"] == "unreviewed" and body["is_current"] is False
    assert api.get(f"/api/exposures/{run.exposure_id}/").json()["current_run"] is None


# ----------------------------------------------------------------------------- admin


def test_groups_and_the_review_log_are_in_the_admin(client, django_user_model, team, run):
    services.review_run(user=team["reviewer"], run=run, state=ReviewState.APPROVED, comment="fine")
    admin = django_user_model.objects.create_user("root", password="pw-root-12345", is_staff=True, is_superuser=True)
    client.force_login(admin)
    groups = client.get("/admin/auth/group/").content.decode()
    assert "reviewers" in groups and "viewers" in groups
    log = client.get("/admin/core/reviewevent/")
    assert log.status_code == 200 and "rita" in log.content.decode()
    assert client.get("/admin/core/reviewevent/add/").status_code == 403  # the log is not edited by hand
    assert client.get(f"/admin/core/calibrationrun/{run.pk}/change/").status_code == 200


def test_demo_setup_makes_the_demo_user_a_reviewer():
    call_command("demo_setup", "--no-data", stdout=io.StringIO())
    from django.contrib.auth import get_user_model

    demo = get_user_model().objects.get(username="demo")
    assert demo.groups.filter(name="reviewers").exists() and selectors.can_review(demo)


def test_viewers_only_look_they_cannot_upload_or_start_runs(client, team, run, make_fits):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.authtoken.models import Token

    from calibweb.core.models import CalibrationRun, Exposure

    victor = team["viewer"]
    client.force_login(victor)
    assert client.get(f"/runs/{run.pk}/").status_code == 200  # looking is fine
    path = make_fits("v.fits")
    n_exposures, n_runs = Exposure.objects.count(), CalibrationRun.objects.count()
    with open(path, "rb") as fh:
        response = client.post("/exposures/upload/", {"files": [SimpleUploadedFile("v.fits", fh.read())]})
    assert response.status_code == 403 and "Viewers can only look" in response.json()["error"]
    token = Token.objects.create(user=victor).key
    api = client.post("/api/runs/", {"exposure": run.exposure_id}, content_type="application/json",
                      HTTP_AUTHORIZATION=f"Token {token}")
    assert api.status_code == 403 and "viewers" in api.json()["detail"]
    assert (Exposure.objects.count(), CalibrationRun.objects.count()) == (n_exposures, n_runs)
