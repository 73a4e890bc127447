"""A region's mailboxes as addresses to send to: the sourced address, or in the demo its `.invalid` stand-in.

A mailbox that is not set has nowhere to go. Where the message is the point (a page, an escalation) that is
an error the caller's retry loop keeps seeing until the region's settings are filled in (`restriction-orders
doctor` refuses to start production before that); where the mailbox is a copy beside a person, it is left out.
"""

from __future__ import annotations

import logging

from models.regions import RegionSettings

log = logging.getLogger(__name__)
MAILBOXES = ("on_call_email", "escalation_email", "support_queue_email")


class MailboxUnset(RuntimeError):
    """The region's settings give no address for this mailbox."""


def optional(region: RegionSettings, name: str, *, demo: bool) -> str | None:
    """The address of `name` (one of MAILBOXES), or None when it is not set; `demo`: the embedded demo's
    `.invalid` stand-in may be used."""
    if name not in MAILBOXES:
        raise ValueError(f"unknown mailbox {name!r}")
    address = getattr(region, name).address(demo=demo)
    if address is None:
        log.warning("region %s: %s is not set; nothing is sent to it", region.code, name)
    return address


def required(region: RegionSettings, name: str, *, demo: bool) -> str:
    """The address of `name`; MailboxUnset when the region's settings give none."""
    address = optional(region, name, demo=demo)
    if address is None:
        raise MailboxUnset(f"region {region.code}: {name} is not set in the region settings "
                           "(give it a value and a source in regions.toml)")
    return address
