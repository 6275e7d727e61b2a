from django.urls import path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.authtoken.views import obtain_auth_token

from . import views

urlpatterns = [
    path("token/", obtain_auth_token, name="api-token"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("exposures/", views.ExposureListCreate.as_view(), name="api-exposures"),
    path("exposures/<int:pk>/", views.ExposureDetail.as_view(), name="api-exposure"),
    path("exposures/<int:pk>/header/", views.ExposureHeader.as_view(), name="api-exposure-header"),
    path("runs/", views.RunListCreate.as_view(), name="api-runs"),
    path("runs/<int:pk>/", views.RunDetail.as_view(), name="api-run"),
    path("runs/<int:pk>/cancel/", views.RunCancel.as_view(), name="api-run-cancel"),
    path("runs/<int:pk>/review/", views.RunReview.as_view(), name="api-run-review"),
    path("runs/<int:pk>/reviews/", views.RunReviews.as_view(), name="api-run-reviews"),
    path("runs/<int:pk>/outputs/<str:name>", views.RunOutputDownload.as_view(), name="api-run-output"),
    path("configs/", views.ConfigList.as_view(), name="api-configs"),
    path("refcats/", views.RefcatList.as_view(), name="api-refcats"),
]
