from django.urls import include, path

from web import signin

urlpatterns = [
    # allauth's login view, with a policy that lets the form go on to Microsoft (web.signin.login).
    path("accounts/login/", signin.login, name="account_login"),
    path("accounts/", include("allauth.urls")),
    path("", include("web.urls")),
]
