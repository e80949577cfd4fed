"""A tiny Django REST Framework + djangorestframework-simplejwt backend, in process: the reference the SimpleJWT
profile is compared with. Configured as the seed's backend (`AUTH_HEADER_TYPES = ("JWT",)`)."""

import django
from django.conf import settings

USERNAME, PASSWORD = "ahmadakbar", "password"


def urlpatterns():
    from django.urls import path
    from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView, TokenVerifyView

    return [path("users/login/", TokenObtainPairView.as_view()), path("users/refresh/", TokenRefreshView.as_view()),
            path("users/verify/", TokenVerifyView.as_view())]


def client():
    """A Django test client of the reference backend, with `ahmadakbar` / `password` as its one user."""
    if not settings.configured:
        settings.configure(
            DEBUG=False, SECRET_KEY="reference-only-" + "x" * 40, ROOT_URLCONF="tests.drf_urls", ALLOWED_HOSTS=["*"],
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework",
                            "rest_framework_simplejwt"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            MIDDLEWARE=[], USE_TZ=True,
            SIMPLE_JWT={"AUTH_HEADER_TYPES": ("JWT",), "ROTATE_REFRESH_TOKENS": True},
        )
        django.setup()
        from django.contrib.auth.models import User
        from django.core.management import call_command

        call_command("migrate", verbosity=0, run_syncdb=True)
        User.objects.create_user(USERNAME, password=PASSWORD)
    from django.test import Client

    return Client()
