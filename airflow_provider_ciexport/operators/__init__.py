"""Segment export operators."""

from __future__ import annotations
