"""Helpers shared by test modules (no pytest fixtures here: each test module defines its own)."""
