"""Timestamps in answers → cues, subtitles and SRT / VTT / JSON."""

from __future__ import annotations

import json

import pytest

from vlm_app.ui.timeline import Cue, find_cues, format_clock, parse_time, subtitles, to_json, to_srt, to_vtt


@pytest.mark.parametrize("text, seconds", [("00:07", 7.0), ("1:05", 65.0), ("01:02:03", 3723.0),
                                           ("00:01.5", 1.5), ("00:02,25", 2.25), ("12.5s", 12.5),
                                           ("3 seconds", 3.0), ("4 sec", 4.0)])
def test_parse_time(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


def test_format_clock():
    assert format_clock(65.9) == "01:05" and format_clock(3723) == "1:02:03"


def test_cues_from_ranges_moments_and_brackets():
    answer = ("Timeline:\n- 00:05 - 00:09: a dog runs across the lawn\n- At 00:20 a car appears.\n"
              "[00:30, 00:34] people wave\nFrom 40s to 42.5 seconds the light changes")
    cues = find_cues(answer, duration=60)
    assert [(cue.start, cue.end) for cue in cues] == [(5, 9), (20, 23), (30, 34), (40, 42.5)]
    assert cues[0].text == "a dog runs across the lawn" and cues[0].label == "00:05 - 00:09"
    assert cues[1].text == "At 00:20 a car appears."  # a timestamp inside a sentence stays in it
    assert cues[2].text == "people wave"


def test_moments_end_at_the_next_cue_and_duration_clips():
    cues = find_cues("00:01 one\n00:02 two\n00:09 three\n00:20 past the end", duration=10)
    assert [(cue.start, cue.end) for cue in cues] == [(1, 2), (2, 5), (9, 10)]


def test_plain_numbers_and_lists_are_not_ranges():
    assert find_cues("There are 3 people and 2 dogs.") == []
    cues = find_cues("It blinks at 00:01, 00:02 and again.")
    assert [(cue.start, cue.end) for cue in cues][0] == (1, 2)  # "00:01" alone ends where "00:02" starts
    assert len(cues) == 2


def test_exports():
    cues = [Cue(1.5, 3.0, "a dog runs", "00:01"), Cue(3723.25, 3725.0, "a car", "1:02:03")]
    assert to_srt(cues) == ("1\n00:00:01,500 --> 00:00:03,000\na dog runs\n\n"
                            "2\n01:02:03,250 --> 01:02:05,000\na car\n")
    assert to_vtt(cues).startswith("WEBVTT\n\n00:00:01.500 --> 00:00:03.000\na dog runs\n")
    assert json.loads(to_json(cues))[1] == {"start": 3723.25, "end": 3725.0, "text": "a car", "label": "1:02:03"}
    assert subtitles(cues)[0] == {"text": "a dog runs", "timestamp": [1.5, 3.0]}
