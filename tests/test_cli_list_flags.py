"""One syntax for every list-valued flag: `a,b`, `a b`, mixes and repeats give the same list."""

import pytest

from vlm_app.cli import build_parser, main

LIST_FLAGS = [
    (["ui"], "--models", "models"),
    (["ui"], "--allow-dir", "allow_dir"),
    (["compare", "clip.mp4"], "--models", "models"),
    (["bench", "adapter"], "--models", "models"),
]
SPELLINGS = [["a,b,c"], ["a", "b", "c"], ["a,b", "c"], ["a, b,", "c"]]


@pytest.mark.parametrize("command,flag,dest", LIST_FLAGS)
@pytest.mark.parametrize("values", SPELLINGS)
def test_list_flags_accept_commas_spaces_and_mixes(command, flag, dest, values):
    args = build_parser().parse_args([*command, flag, *values])
    assert getattr(args, dest) == ["a", "b", "c"]


@pytest.mark.parametrize("command,flag,dest", LIST_FLAGS)
def test_list_flags_can_be_repeated(command, flag, dest):
    args = build_parser().parse_args([*command, flag, "a,b", flag, "c"])
    assert getattr(args, dest) == ["a", "b", "c"]


def test_compare_with_one_model_is_a_clear_error(tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    assert main(["compare", str(clip), "--models", "only-one"]) == 2
    assert "at least two models" in capsys.readouterr().err
