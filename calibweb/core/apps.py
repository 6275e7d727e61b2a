from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "calibweb.core"
    label = "core"
    verbose_name = "Calibration"
    default_auto_field = "django.db.models.BigAutoField"
