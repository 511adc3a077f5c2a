"""User acknowledgements on the read side, recorded as events so read models stay replayable.

Risk alerts and notifications are projections of account events; a user acknowledging an
alert or reading a notification is a fact of its own, appended by a command handler and
projected like any other event. The projections match them by ``account_id`` and ids, not
by stream: they can go to the account stream (whose aggregate then needs no-op appliers)
or to a stream of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from domain.events import Event


@dataclass(frozen=True, kw_only=True, slots=True)
class RiskAlertAcknowledged(Event):
    account_id: str
    alert_id: str
    by: str
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class NotificationRead(Event):
    account_id: str
    notification_id: str
    by: str
    at: datetime
