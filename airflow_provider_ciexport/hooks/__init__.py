"""Hooks that hold the destination credentials."""

from __future__ import annotations
