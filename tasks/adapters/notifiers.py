"""Paging channels beside the email (an SMS gateway, a chat channel, a pager service), behind `Notifier`.

A webhook notifier (JSON POST) ships with the project, off unless `RO_PAGING_WEBHOOK_URL` is set. A
notifier gets what a page may say (no personal data, no free text) as a JSON-able dict.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)


class Notifier(Protocol):
    """One way of reaching a person. `notify` returns True when the message was handed over."""
    name: str

    def notify(self, message: dict[str, Any]) -> bool: ...


class WebhookNotifier:
    name = "webhook"

    def __init__(self, url: str, token: str = "", timeout: float = 3.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url, self.token, self.timeout, self.transport = url, token, timeout, transport

    def notify(self, message: dict[str, Any]) -> bool:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with httpx.Client(timeout=self.timeout, transport=self.transport) as client:
                r = client.post(self.url, json=message, headers=headers)
            return 200 <= r.status_code < 300
        except httpx.HTTPError as exc:
            log.warning("webhook for %s failed: %s", message.get("reference", "?"), type(exc).__name__)
            return False
