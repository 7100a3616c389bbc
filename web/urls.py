from django.urls import path

from web import api, health, o365, views

urlpatterns = [
    path("", views.home, name="home"),
    path("status/", views.status, name="status"),
    path("api/v1/status", api.status, name="api-status"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("o365", o365.webhook, name="o365"),
]
