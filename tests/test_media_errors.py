"""Bad inputs: each raises a specific vlm_app error whose message says what to do, and the CLI exits with 2."""

import base64
import http.server
import struct
import sys
import threading
import time

import av
import pytest
from media_fixtures import VideoSpec, write_video
from PIL import Image

from vlm_app import cli
from vlm_app.errors import DecodeError, LimitError, OptionsError, SourceError
from vlm_app.media import DEFAULT_LIMITS, load_image, load_video


def assert_cli_error(capsys, argv, message):
    assert cli.main(["inspect", *argv, "--model", "qwen2_5_vl"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("kind, error, message", [
    ("audio_only", DecodeError, "has no video stream"),
    ("truncated", DecodeError, "is not a readable video"),
    ("index_cut", DecodeError, "holds no video or audio stream (its index is missing or cut off"),
    ("animated_webp", DecodeError, "is an animated WebP, which FFmpeg cannot decode; convert it"),
    ("corrupt", DecodeError, "is not a readable video"),
    ("text", DecodeError, "is not a readable video"),
    ("empty", DecodeError, "is empty (0 bytes)"),
    ("directory", SourceError, "is a directory"),
])
def test_bad_files(broken_media, capsys, kind, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_video(broken_media[kind])
    assert_cli_error(capsys, [str(broken_media[kind])], message)


def test_missing_file(tmp_path, capsys):
    with pytest.raises(SourceError, match="no such file"):
        load_video(tmp_path / "nope.mp4")
    assert_cli_error(capsys, [str(tmp_path / "nope.mp4")], "no such file")


def test_a_pipe_or_a_device_is_refused_before_it_is_opened(tmp_path, capsys):
    import os

    pipe = tmp_path / "clip.mp4"
    os.mkfifo(pipe)  # opening it to read would wait for a writer forever
    for path in (pipe, "/dev/zero"):
        with pytest.raises(SourceError, match="is not a regular file"):
            load_video(path)
        assert_cli_error(capsys, [str(path)], "is not a regular file (a pipe, socket or device)")


def test_a_file_url_without_its_path_says_how_to_write_one(capsys):
    for url in ("file://clip.mp4", "file://"):
        with pytest.raises(SourceError, match="write it with three slashes"):
            load_video(url)
    assert_cli_error(capsys, ["file://clip.mp4"], "is not a file:// URL of a path")


def test_unsupported_url_scheme(capsys):
    with pytest.raises(SourceError, match="unsupported URL scheme 'ftp'"):
        load_video("ftp://example.com/clip.mp4")
    assert_cli_error(capsys, ["s3://bucket/clip.mp4"], "unsupported URL scheme 's3'")


@pytest.mark.parametrize("argv, options, message", [
    (["--fps", "1", "--nframes", "4"], {"fps": 1, "nframes": 4}, "either fps or nframes"),
    (["--min-frames", "9", "--max-frames", "4"], {"min_frames": 9, "max_frames": 4},
     "min_frames (9) is greater than max_frames (4)"),
    (["--min-pixels", "90000", "--max-pixels", "50000"], {"min_pixels": 90000, "max_pixels": 50000},
     "min_pixels (90000) is greater than max_pixels"),
    (["--max-pixels", "50000"], {"max_pixels": 50000}, "smaller than min_pixels"),
    (["--start", "1.5", "--end", "0.5"], {"video_start": 1.5, "video_end": 0.5}, "greater than video_end"),
    (["--start", "1.0", "--end", "1.01"], {"video_start": 1.0, "video_end": 1.01}, "at least two frames"),
    (["--nframes", "100"], {"nframes": 100}, "the clip has 48 frames"),
    (["--fps", "-2"], {"fps": -2}, "fps must be positive"),
    (["--fps", "inf"], {"fps": float("inf")}, "fps must be a finite number, got inf"),
    (["--end", "nan"], {"video_end": float("nan")}, "video_end must be a finite number, got nan"),
])
def test_contradictory_or_out_of_range_options(media_videos, capsys, argv, options, message):
    path = media_videos["h264_24fps_2s"]
    with pytest.raises(OptionsError) as caught:
        load_video(path, **options)
    assert message in str(caught.value)
    assert_cli_error(capsys, [str(path), *argv], message)


@pytest.mark.parametrize("options", [{"fps": "2"}, {"nframes": True}, {"max_pixels": [50000]}])
def test_options_that_are_not_numbers(media_videos, options):
    with pytest.raises(OptionsError, match="must be a finite number"):
        load_video(media_videos["h264_24fps_2s"], **options)


def test_unknown_option_and_backend(media_videos):
    with pytest.raises(OptionsError, match="unknown option.*fsp"):
        load_video(media_videos["h264_24fps_2s"], fsp=2)
    with pytest.raises(OptionsError, match="unknown video backend"):
        load_video(media_videos["h264_24fps_2s"], backend="ffmpeg")
    with pytest.raises(OptionsError, match="does not resize"):
        load_video(media_videos["h264_24fps_2s"], "smolvlm2", max_pixels=10000)


def test_missing_or_unloadable_torchcodec(media_videos, monkeypatch, capsys):
    path = media_videos["h264_24fps_2s"]
    with monkeypatch.context() as patched:
        patched.setattr("vlm_app.media.decode.available_backends", lambda: ["pyav"])
        with pytest.raises(OptionsError, match="torchcodec backend is not installed"):
            load_video(path, backend="torchcodec")
        assert_cli_error(capsys, [str(path), "--backend", "torchcodec"], "torchcodec backend is not installed")
    # installed, but FFmpeg's shared libraries are missing: torchcodec's import fails
    monkeypatch.setattr("vlm_app.media.decode.available_backends", lambda: ["pyav", "torchcodec"])
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    with pytest.raises(OptionsError, match=r"needs FFmpeg's shared libraries \(`apt-get install ffmpeg`\)"):
        load_video(path, backend="torchcodec")


@pytest.mark.parametrize("limit, value, message", [
    ("max_file_bytes", 1000, "byte limit"),
    ("max_duration_seconds", 1.0, "over the 1 s limit"),
    ("max_frame_pixels", 1000, "pixel limit"),
    ("max_source_frames", 10, "more than 10 frames"),
    ("max_sampled_frames", 3, "over the 3 limit"),
    ("decode_seconds", 0.0, "longer than the 0 s limit"),
])
def test_limits(media_videos, monkeypatch, capsys, limit, value, message):
    limits = DEFAULT_LIMITS.with_overrides(**{limit: value})
    with pytest.raises(LimitError, match=message):
        load_video(media_videos["h264_24fps_2s"], limits=limits)
    monkeypatch.setattr("vlm_app.media.video.DEFAULT_LIMITS", limits)
    assert_cli_error(capsys, [str(media_videos["h264_24fps_2s"])], message)


def test_a_header_that_overstates_the_duration_is_not_over_the_limit(tmp_path, capsys):
    """The frames decide how long a video lasts: a 2 s Matroska file whose header says 10 h is 2 s."""
    path = write_video(tmp_path / "clip.mkv", VideoSpec("clip", container="mkv"))
    data = bytearray(path.read_bytes())
    at = data.index(b"\x44\x89\x88") + 3  # the Segment's Duration: an 8-byte float, in milliseconds
    data[at : at + 8] = struct.pack(">d", 10 * 3600 * 1000.0)
    path.write_bytes(data)
    with av.open(str(path)) as container:
        assert container.duration / av.time_base == 10 * 3600  # FFmpeg takes the header's word
    assert load_video(path).metadata.duration == pytest.approx(2.0, abs=1e-3)
    assert cli.main(["inspect", str(path), "--model", "qwen2_5_vl"]) == 0
    assert "2.00 s" in capsys.readouterr().out


class _Handler(http.server.BaseHTTPRequestHandler):
    video = b""

    def do_GET(self):
        if self.path == "/clip.mp4":
            self._send(200, self.video)
        elif self.path == "/slow":
            time.sleep(2)
            self._send(200, self.video)
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/big":
            self._send(200, b"x" * 5000)
        else:
            self._send(404, b"not found")

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_server(media_videos):
    _Handler.video = media_videos["h264_24fps_2s"].read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_video_is_fetched_and_cleaned_up(http_server, media_videos, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    video = load_video(f"{http_server}/clip.mp4")
    assert video.frames_indices == load_video(media_videos["h264_24fps_2s"]).frames_indices
    assert list(tmp_path.iterdir()) == []  # the download was removed


@pytest.mark.parametrize("path, limits, message", [
    ("/missing", {}, "answered HTTP 404"),
    ("/slow", {"http_connect_seconds": 0.5}, "no answer within 0.5 s"),
    ("/loop", {"http_max_redirects": 3}, "redirected more than 3 times"),
    ("/big", {"max_file_bytes": 1000}, "over the 1000 byte download limit"),
])
def test_http_errors(http_server, monkeypatch, capsys, path, limits, message):
    limits = DEFAULT_LIMITS.with_overrides(**limits)
    with pytest.raises((SourceError, LimitError), match=message):
        load_video(http_server + path, limits=limits)
    monkeypatch.setattr("vlm_app.media.video.DEFAULT_LIMITS", limits)
    assert_cli_error(capsys, [http_server + path], message)


def test_file_and_data_uris(media_videos):
    path = media_videos["h264_24fps_2s"]
    expected = load_video(path).frames_indices
    assert load_video(path.as_uri()).frames_indices == expected
    data_uri = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
    assert load_video(data_uri).frames_indices == expected
    with pytest.raises(SourceError, match="not valid base64"):
        load_video("data:video/mp4;base64,@@@")
    with pytest.raises(SourceError, match="only base64"):
        load_video("data:video/mp4,abc")


def test_bad_image(broken_media):
    with pytest.raises(DecodeError, match="not a readable image"):
        load_image(broken_media["text"])
    with pytest.raises(OptionsError, match="unknown image option"):
        load_image(Image.new("RGB", (10, 10)), fps=2)
