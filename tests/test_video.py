"""wan.video: atomic writes leave nothing on failure, claims are exclusive and die with their process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from wan.paths import claim_output, temp_files
from wan.video import atomic_path

REPO = Path(__file__).resolve().parent.parent


class Stop(BaseException):
    """Stands for generate.Interrupted: a signal raised as an exception, not an Exception."""


@pytest.mark.parametrize("error", [OSError, Stop])
def test_atomic_path_removes_its_temporary_file_on_any_exception(tmp_path, error):
    target = tmp_path / "a.mp4"
    with pytest.raises(error), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a video")
        assert temp_files(target) == [tmp]
        raise error()
    assert not list(tmp_path.iterdir())


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
