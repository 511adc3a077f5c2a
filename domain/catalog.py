"""Every module that defines stored events, imported so that each event type is registered.

``EventRegistry.get`` imports this module the first time it meets an unknown type name,
so a process that reads the log (rebuild, audit replay, the Kafka relay) decodes every
event whatever it happened to import. A new event module must be listed here; the test
``tests/unit/test_event_codec.py::test_catalog_registers_every_event_module`` checks it.
"""

from __future__ import annotations

from domain import account_events, alerts, bot, bot_events, user

MODULES = (account_events, alerts, bot, bot_events, user)
