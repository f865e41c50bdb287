"""Test doubles: a fake ModelsLab API/CDN server and image helpers."""

from .images import color_for, jpeg_bytes, png_bytes, png_for
from .modelslab import (
    ENDPOINTS,
    PONY_SCHEDULERS,
    SCHEDULERS,
    FakeJob,
    FakeModelsLab,
    RecordedRequest,
    RecordedResponse,
    WebhookDelivery,
    check_body,
    example_body,
)

__all__ = [
    "ENDPOINTS",
    "PONY_SCHEDULERS",
    "SCHEDULERS",
    "FakeJob",
    "FakeModelsLab",
    "RecordedRequest",
    "RecordedResponse",
    "WebhookDelivery",
    "check_body",
    "color_for",
    "example_body",
    "jpeg_bytes",
    "png_bytes",
    "png_for",
]
