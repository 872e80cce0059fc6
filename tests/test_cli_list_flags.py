"""One syntax for every list-valued flag: `a,b`, `a b`, mixes and repeats give the same list."""

import argparse

import pytest

from vlm_app.cli import ListFlag, build_parser, main

LIST_FLAGS = [
    (["ui"], "--models", "models"),
    (["ui"], "--allow-dir", "allow_dir"),
    (["ui"], "--allow-host", "allow_host"),
    (["serve"], "--models", "models"),
    (["serve", "--models", "m"], "--allow-dir", "allow_dir"),
    (["serve", "--models", "m"], "--allow-host", "allow_host"),
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


def every_option(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                yield from every_option(subparser)
        elif action.option_strings:
            yield action


def test_every_list_valued_flag_takes_the_one_syntax():
    lists = [action for action in every_option(build_parser())
             if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction)]
    assert lists and all(isinstance(action, ListFlag) for action in lists), [action.option_strings for action in lists]


def test_compare_with_one_model_is_a_clear_error(tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    assert main(["compare", str(clip), "--models", "only-one"]) == 2
    assert "at least two models" in capsys.readouterr().err
