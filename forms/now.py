"""The time every route uses: one FastAPI dependency, so a test pins the whole app with one override
(`app.dependency_overrides[forms.now.now] = clock.now`). Pages call it directly for what they only show."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)
