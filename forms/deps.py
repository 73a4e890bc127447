"""What every route gets from the app: the adapters the composition root built (`create_app(ad)` keeps them in
`app.state.adapters`) and the time, from the adapters' clock, so a test pins the whole app by building it
with a `FixedClock`."""

from __future__ import annotations

from datetime import datetime

from fastapi import Request

from tasks.adapters import Adapters


def adapters(request: Request) -> Adapters:
    ad: Adapters = request.app.state.adapters
    return ad


def now(request: Request) -> datetime:
    return adapters(request).now()
