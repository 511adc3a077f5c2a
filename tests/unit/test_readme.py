"""README.md stays true: every setting and every CLI command it should document is there."""

from __future__ import annotations

from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _settings_classes() -> list[tuple[type, str]]:
    from adapters.kafka.settings import KafkaSettings
    from adapters.settings import Settings
    from api.settings import ApiSettings

    return [(Settings, "TRADECORE_"), (ApiSettings, "TRADECORE_"), (KafkaSettings, "TRADECORE_KAFKA_")]


@pytest.mark.parametrize("cls,prefix", _settings_classes(), ids=lambda v: getattr(v, "__name__", v))
def test_every_setting_is_documented(cls: type, prefix: str) -> None:
    names = [f"{prefix}{name.upper()}" for name in cls.model_fields]  # type: ignore[attr-defined]
    missing = [n for n in names if f"`{n}`" not in README]
    assert not missing, f"README.md does not document {missing}"


def test_every_cli_command_is_documented() -> None:
    import typer.main

    from api.cli import _register_subcommands, app

    _register_subcommands()
    group = typer.main.get_command(app)
    commands = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        commands += [f"tradecore {name} {sub}" for sub in subs] if subs else [f"tradecore {name}"]
    missing = [c for c in commands if c not in README]
    assert not missing, f"README.md does not mention {missing}"


def test_readme_gives_the_two_fresh_machine_commands() -> None:
    assert "pip install -c requirements.lock -e . && .venv/bin/tradecore serve" in README
    assert "pip install -c requirements.lock -e '.[dev,postgres,kafka,eventstoredb]' && bash .ci/test" in README
    ci_test = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "bash .ci/test" in ci_test
