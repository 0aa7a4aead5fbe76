"""wan.paths: claims are exclusive and die with their process; an unwritable output is one line, no file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import generate
from wan.errors import ConfigError
from wan.paths import claim_output, temp_files

REPO = Path(__file__).resolve().parent.parent


def test_temp_files_are_only_those_of_the_output_and_its_sidecar(tmp_path):
    names = [".a.mp4.0123456789ab.tmp.mp4", ".a.mp4.json.0123456789ab.tmp.json", ".a.mp4x.0123456789ab.tmp.mp4"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert sorted(p.name for p in temp_files(tmp_path / "a.mp4")) == sorted(names[:2])


def test_a_claim_is_exclusive_and_removed_on_release(tmp_path):
    video = tmp_path / "sub" / "a.mp4"
    with claim_output(video) as first:
        assert first
        with claim_output(video) as second:
            assert not second
    assert not list((tmp_path / "sub").iterdir())
    with claim_output(video) as again:
        assert again


def test_a_claim_dies_with_its_process(tmp_path):
    """No stale lock: the kernel drops the claim of a process killed by SIGKILL."""
    video = tmp_path / "a.mp4"
    code = (
        "from wan.paths import claim_output\n"
        + f"with claim_output({str(video)!r}):\n    print('held', flush=True)\n    input()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "held\n"
    with claim_output(video) as claimed:
        assert not claimed
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while True:
        with claim_output(video) as claimed:
            if claimed or time.monotonic() > deadline:
                break
    assert claimed


def test_a_folder_that_takes_no_files_is_bad_input():
    """/proc passes the mode-bit check as root, yet no file can be made there: the claim says so."""
    with pytest.raises(ConfigError, match="cannot be written: No such file or directory; choose a writable folder"):
        with claim_output(Path("/proc/out.mp4")):
            pass


def test_the_cli_refuses_an_unwritable_output_path_before_loading(capsys):
    assert generate.main(["--prompt", "x", "--save_file", "/proc/out.mp4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --save_file '/proc/out.mp4': /proc takes no new files (No such file or directory)\n"
