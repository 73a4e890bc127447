"""HTML pages for people, in Swedish, by what they are for: logging in and the start page, the order forms,
an order after it was submitted, and the work queues. `common` holds what they share."""

from __future__ import annotations

from fastapi import APIRouter

from forms.pages import login, order_forms, orders, queues

router = APIRouter(include_in_schema=False)
for _module in (login, order_forms, orders, queues):
    router.include_router(_module.router)
