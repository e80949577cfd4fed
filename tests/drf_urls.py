"""URLs of the DRF reference backend (Django wants them in a module)."""

from tests.drf_reference import urlpatterns as _urlpatterns

urlpatterns = _urlpatterns()
