"""`python -m vlm_app serve` refuses unsafe or broken flags before it binds anything."""

from __future__ import annotations

import pytest

from vlm_app.cli import EXIT_USER_ERROR, main


def test_a_non_loopback_bind_without_a_key_is_refused(tiny_checkpoints, capsys):
    assert main(["serve", "--models", str(tiny_checkpoints["smolvlm2"]), "--host", "0.0.0.0"]) == EXIT_USER_ERROR
    assert "--api-key" in capsys.readouterr().err


def test_a_model_that_does_not_resolve_fails_fast(tmp_path, capsys):
    assert main(["serve", "--models", str(tmp_path / "missing-checkpoint")]) == EXIT_USER_ERROR
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command, flag, value", [("serve", "--keepalive", "-1"), ("serve", "--body-timeout", "0"),
                                                  ("serve", "--max-media-mb", "nan"), ("ui", "--max-duration", "inf"),
                                                  ("ui", "--max-upload-mb", "ten")])
def test_operator_limits_must_be_positive_numbers(tiny_checkpoints, capsys, command, flag, value):
    with pytest.raises(SystemExit) as exited:
        main([command, "--models", str(tiny_checkpoints["smolvlm2"]), flag, value])
    assert exited.value.code == 2
    assert f"argument {flag}: must be a number above 0, got '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_served_names_must_be_names_and_distinct(tiny_checkpoints, tmp_path, capsys, command):
    model = str(tiny_checkpoints["smolvlm2"])
    assert main([command, "--models", f"bad name={model}"]) == EXIT_USER_ERROR
    assert "give NAME=PATH_OR_HUB_ID" in capsys.readouterr().err
    twin = tmp_path / tiny_checkpoints["smolvlm2"].name  # another folder of the same name
    twin.mkdir()
    assert main([command, "--models", model, str(twin)]) == EXIT_USER_ERROR
    assert f"two models would be served as {twin.name!r}" in capsys.readouterr().err
