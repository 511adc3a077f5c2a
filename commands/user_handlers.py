"""Commands and handlers of the ``User`` aggregate (and username claims).

Same style as ``commands.handlers``: one plain function per command, dependencies as
named parameters, registered in ``USER_HANDLERS``; the bus takes
``handlers={**HANDLERS, **USER_HANDLERS}``. The sender of a command is ``user_id`` (as in
every command); the user a command is about is ``subject_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import Field

from commands.handlers import Result, UnitOfWork
from commands.messages import Command, Id
from domain.clock import Clock
from domain.user import Role, User, UsernameClaim, claim_id_for_username, user_id_for_email


def _user(uow: UnitOfWork, user_id: str) -> User:
    return uow.get(User, user_id)


def _claim(uow: UnitOfWork, claim_id: str) -> UsernameClaim:
    return uow.get(UsernameClaim, claim_id)


class RegisterUser(Command):
    stream_prefix: ClassVar[str] = "user"

    email: str = Field(min_length=3, max_length=320)
    username: str | None = Field(default=None, max_length=50)
    role: Role = Role.TRADER
    password_hash: str = Field(min_length=1, max_length=1000)
    first_name: str | None = Field(default=None, max_length=100)
    last_name: str | None = Field(default=None, max_length=100)

    @property
    def aggregate_id(self) -> str:
        return user_id_for_email(self.email)


class ClaimUsername(Command):
    stream_prefix: ClassVar[str] = "username"

    username: str = Field(min_length=3, max_length=50)
    subject_id: Id

    @property
    def aggregate_id(self) -> str:
        return claim_id_for_username(self.username)


class UserCommand(Command):
    stream_prefix: ClassVar[str] = "user"
    subject_id: Id

    @property
    def aggregate_id(self) -> str:
        return self.subject_id


class ChangeRole(UserCommand):
    role: Role


class ChangePassword(UserCommand):
    password_hash: str = Field(min_length=1, max_length=1000)


class AcknowledgeRiskAlert(UserCommand):
    account_id: Id
    alert_id: str = Field(min_length=1, max_length=300)


class MarkNotificationRead(UserCommand):
    account_id: Id
    notification_id: str = Field(min_length=1, max_length=300)


def _user_result(user: User) -> Result:
    s = user.s
    return {
        "user_id": user.id,
        "email": s.email,
        "username": s.username,
        "role": s.role.value,
        "first_name": s.first_name,
        "last_name": s.last_name,
        "registered_at": s.registered_at.isoformat() if s.registered_at else None,
    }


def register_user(cmd: RegisterUser, uow: UnitOfWork, clock: Clock) -> Result:
    user = _user(uow, cmd.aggregate_id)
    user.register(
        email=cmd.email,
        username=cmd.username,
        role=cmd.role,
        password_hash=cmd.password_hash,
        first_name=cmd.first_name,
        last_name=cmd.last_name,
        now=clock.now(),
    )
    return _user_result(user)


def claim_username(cmd: ClaimUsername, uow: UnitOfWork, clock: Clock) -> Result:
    claim = _claim(uow, cmd.aggregate_id)
    claim.claim(username=cmd.username, user_id=cmd.subject_id, now=clock.now())
    return {"username": claim.username, "user_id": claim.user_id}


def change_role(cmd: ChangeRole, uow: UnitOfWork, clock: Clock) -> Result:
    user = _user(uow, cmd.subject_id)
    user.change_role(role=cmd.role, by=cmd.user_id, now=clock.now())
    return _user_result(user)


def change_password(cmd: ChangePassword, uow: UnitOfWork, clock: Clock) -> Result:
    user = _user(uow, cmd.subject_id)
    user.change_password(password_hash=cmd.password_hash, by=cmd.user_id, now=clock.now())
    return {"user_id": user.id}


def acknowledge_risk_alert(cmd: AcknowledgeRiskAlert, uow: UnitOfWork, clock: Clock) -> Result:
    user = _user(uow, cmd.subject_id)
    now = clock.now()
    recorded = user.acknowledge_alert(account_id=cmd.account_id, alert_id=cmd.alert_id, now=now)
    return {"alert_id": cmd.alert_id, "acknowledged": True, "recorded": recorded, "at": now.isoformat()}


def mark_notification_read(cmd: MarkNotificationRead, uow: UnitOfWork, clock: Clock) -> Result:
    user = _user(uow, cmd.subject_id)
    now = clock.now()
    recorded = user.mark_notification_read(account_id=cmd.account_id, notification_id=cmd.notification_id, now=now)
    return {"notification_id": cmd.notification_id, "read": True, "recorded": recorded, "at": now.isoformat()}


USER_HANDLERS: dict[type[Command], Callable[..., Result]] = {
    RegisterUser: register_user,
    ClaimUsername: claim_username,
    ChangeRole: change_role,
    ChangePassword: change_password,
    AcknowledgeRiskAlert: acknowledge_risk_alert,
    MarkNotificationRead: mark_notification_read,
}
