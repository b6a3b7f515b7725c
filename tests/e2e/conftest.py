"""The end-to-end tests use the `world` fixture from tests/conftest.py."""
