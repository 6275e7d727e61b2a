from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("exposures/", views.exposure_list, name="exposure-list"),
    path("exposures/upload/", views.exposure_upload, name="exposure-upload"),
    path("exposures/<int:pk>/", views.exposure_detail, name="exposure-detail"),
    path("runs/", views.run_list, name="run-list"),
    path("runs/start/", views.runs_start, name="runs-start"),
    path("runs/trends/", views.run_trends, name="run-trends"),
    path("runs/trends.csv", views.run_trends_csv, name="run-trends-csv"),
    path("runs/compare/", views.run_compare, name="run-compare"),
    path("runs/compare/<slug:table>.csv", views.run_compare_csv, name="run-compare-csv"),
    path("runs/<int:pk>/", views.run_detail, name="run-detail"),
    path("runs/<int:pk>/status/", views.run_status, name="run-status"),
    path("runs/<int:pk>/cancel/", views.run_cancel, name="run-cancel"),
    path("runs/<int:pk>/rerun/", views.run_rerun, name="run-rerun"),
    path("runs/<int:pk>/review/", views.run_review, name="run-review"),
    path("runs/<int:pk>/comment/", views.run_comment, name="run-comment"),
    path("runs/<int:pk>/outputs/<str:name>", views.output_download, name="output-download"),
    path("runs/<int:pk>/diagnostics/<slug:section>.json", views.run_diagnostics_item, name="run-diagnostics-item"),
    path("runs/<int:pk>/diagnostics/<slug:name>.csv", views.run_diagnostics_csv, name="run-diagnostics-csv"),
    path("runs/<int:pk>/report.html", views.run_report, name="run-report"),
    path("healthz", views.healthz, name="healthz"),
]
