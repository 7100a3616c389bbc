from django.apps import AppConfig


class SigninConfig(AppConfig):
    name = "signin"
    verbose_name = "Sign-in with Microsoft Entra ID, role rules and MFA policy"

    def ready(self) -> None:
        from signin import signals  # noqa: F401  (connects the audit receivers)
