"""Streaming export pipeline: segment sources, contact building and request batching."""

from __future__ import annotations
