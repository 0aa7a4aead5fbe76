"""wan.video: atomic writes leave nothing on failure."""

from __future__ import annotations

import pytest

from wan.paths import temp_files
from wan.video import atomic_path


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
