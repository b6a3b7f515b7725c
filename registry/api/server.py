"""The ASGI entry point uvicorn imports: one registry per worker process, from the environment."""

from __future__ import annotations

from fastapi import FastAPI

from registry.api.app import create_app
from registry.config import Settings
from registry.service.setup import open_registry


def app_from_env() -> FastAPI:
    """Build the app from ``REGISTRY_*`` settings; the schema was migrated before workers start."""
    return create_app(open_registry(Settings(), migrate_schema=False))
