"""The ``User`` aggregate (stream ``user-<id>``): identity, role, password hash, acknowledgements.

A user's id is derived from the lower-cased e-mail address, so two registrations of one
address land on the same stream and the event store's expected-version check refuses the
second. A username, when given, is claimed the same way on its own ``username-<id>``
stream (``UsernameClaim``). The password arrives already hashed: hashing is I/O-free but
slow and belongs to the edge, not to the decision.

Acknowledging a risk alert and reading a notification are facts a user states; they are
recorded on the user's stream (the events of ``domain.alerts``, which carry the account
they concern) and projected like any other event.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from domain.aggregate import Aggregate
from domain.alerts import NotificationRead, RiskAlertAcknowledged
from domain.errors import Conflict, NotFound, ValidationFailed
from domain.events import Event

_NAMESPACE = uuid.UUID("6f1c3b0e-5a7d-4d7e-9c43-2b8f0e4a9d11")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{2,63}$")
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,49}$")


class Role(StrEnum):
    ADMIN = "admin"
    TRADER = "trader"
    ANALYST = "analyst"
    VIEWER = "viewer"


def normalise_email(email: str) -> str:
    """Return ``email`` trimmed and lower-cased, or raise ``ValidationFailed``."""
    text = email.strip().lower()
    if not _EMAIL.match(text):
        raise ValidationFailed(f"not an e-mail address: {email!r}", details={"field": "email"})
    return text


def normalise_username(username: str) -> str:
    text = username.strip()
    if not _USERNAME.match(text):
        raise ValidationFailed(
            "username must be 3-50 letters, digits, '_', '.' or '-', starting with a letter or digit",
            details={"field": "username"},
        )
    return text


def user_id_for_email(email: str) -> str:
    """The user id of an e-mail address (the same for every spelling of its case)."""
    return "usr_" + uuid.uuid5(_NAMESPACE, "email:" + normalise_email(email)).hex


def claim_id_for_username(username: str) -> str:
    return uuid.uuid5(_NAMESPACE, "username:" + normalise_username(username).lower()).hex


@dataclass(frozen=True, kw_only=True, slots=True)
class UserRegistered(Event):
    user_id: str
    email: str
    username: str | None = None
    role: Role
    password_hash: str
    first_name: str | None = None
    last_name: str | None = None
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class RoleChanged(Event):
    user_id: str
    role: Role
    previous: Role
    by: str
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class PasswordChanged(Event):
    user_id: str
    password_hash: str
    by: str
    at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class UsernameClaimed(Event):
    username: str
    user_id: str
    at: datetime


@dataclass(kw_only=True, slots=True)
class UserState:
    registered: bool = False
    email: str = ""
    username: str | None = None
    role: Role = Role.VIEWER
    password_hash: str = ""
    first_name: str | None = None
    last_name: str | None = None
    registered_at: datetime | None = None
    acknowledged_alerts: set[str] = field(default_factory=set)
    read_notifications: set[str] = field(default_factory=set)


class User(Aggregate):
    """Identity and role of one person; the only writer of its own acknowledgements."""

    stream_prefix = "user"

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.s = UserState()

    @property
    def exists(self) -> bool:
        return self.s.registered

    def _require(self) -> None:
        if not self.s.registered:
            raise NotFound(f"user {self.id} not found")

    def register(
        self,
        *,
        email: str,
        username: str | None,
        role: Role,
        password_hash: str,
        first_name: str | None,
        last_name: str | None,
        now: datetime,
    ) -> None:
        if self.s.registered:
            raise Conflict("a user with this e-mail address already exists", code="USER_EXISTS")
        normalised = normalise_email(email)
        if user_id_for_email(normalised) != self.id:
            raise ValidationFailed("user id does not match the e-mail address")
        if not password_hash:
            raise ValidationFailed("password hash is empty")
        self._emit(
            UserRegistered(
                user_id=self.id,
                email=normalised,
                username=normalise_username(username) if username else None,
                role=role,
                password_hash=password_hash,
                first_name=first_name,
                last_name=last_name,
                at=now,
            )
        )

    def change_role(self, *, role: Role, by: str, now: datetime) -> None:
        self._require()
        if role is not self.s.role:
            self._emit(RoleChanged(user_id=self.id, role=role, previous=self.s.role, by=by, at=now))

    def change_password(self, *, password_hash: str, by: str, now: datetime) -> None:
        self._require()
        if not password_hash:
            raise ValidationFailed("password hash is empty")
        self._emit(PasswordChanged(user_id=self.id, password_hash=password_hash, by=by, at=now))

    def acknowledge_alert(self, *, account_id: str, alert_id: str, now: datetime) -> bool:
        """Record the acknowledgement once; returns False when it was already recorded."""
        self._require()
        if alert_id in self.s.acknowledged_alerts:
            return False
        self._emit(RiskAlertAcknowledged(account_id=account_id, alert_id=alert_id, by=self.id, at=now))
        return True

    def mark_notification_read(self, *, account_id: str, notification_id: str, now: datetime) -> bool:
        """Record the reading once; returns False when it was already recorded."""
        self._require()
        if notification_id in self.s.read_notifications:
            return False
        self._emit(NotificationRead(account_id=account_id, notification_id=notification_id, by=self.id, at=now))
        return True

    def _apply_UserRegistered(self, e: UserRegistered) -> None:
        self.s.registered = True
        self.s.email = e.email
        self.s.username = e.username
        self.s.role = e.role
        self.s.password_hash = e.password_hash
        self.s.first_name = e.first_name
        self.s.last_name = e.last_name
        self.s.registered_at = e.at

    def _apply_RoleChanged(self, e: RoleChanged) -> None:
        self.s.role = e.role

    def _apply_PasswordChanged(self, e: PasswordChanged) -> None:
        self.s.password_hash = e.password_hash

    def _apply_RiskAlertAcknowledged(self, e: RiskAlertAcknowledged) -> None:
        self.s.acknowledged_alerts.add(e.alert_id)

    def _apply_NotificationRead(self, e: NotificationRead) -> None:
        self.s.read_notifications.add(e.notification_id)


class UsernameClaim(Aggregate):
    """Who holds a username (stream ``username-<id>``); makes usernames unique."""

    stream_prefix = "username"

    def __init__(self, claim_id: str) -> None:
        super().__init__(claim_id)
        self.username: str | None = None
        self.user_id: str | None = None

    def claim(self, *, username: str, user_id: str, now: datetime) -> None:
        """Claim for ``user_id``; claiming again for the same user changes nothing."""
        name = normalise_username(username)
        if claim_id_for_username(name) != self.id:
            raise ValidationFailed("claim id does not match the username")
        if self.user_id is None:
            self._emit(UsernameClaimed(username=name, user_id=user_id, at=now))
        elif self.user_id != user_id:
            raise Conflict(f"username {name!r} is taken", code="USERNAME_TAKEN", details={"field": "username"})

    def _apply_UsernameClaimed(self, e: UsernameClaimed) -> None:
        self.username = e.username
        self.user_id = e.user_id
