"""A write that fails for lack of space is one line saying so, through guarded() as the entry points use it."""

import errno
import subprocess
import sys
import textwrap

import pytest

from reparam.guard import find_user_error

SCRIPT = textwrap.dedent(
    """
    import errno, logging, sys
    from reparam.guard import guarded

    logging.getLogger("reparam.file").addHandler(logging.NullHandler())  # the run's log file, under Hydra
    logging.getLogger("reparam.file").propagate = False

    @guarded
    def main():
        kind = sys.argv[1]
        if kind == "zip":  # what torch.save raised on the full disk of a contributor's deploy
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4419392 vs 4419280")
        if kind == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", sys.argv[2])
        raise ValueError("a bug keeps its traceback")

    main()
    """
)


@pytest.mark.parametrize("kind", ["zip", "oserror"])
def test_a_full_disk_is_one_line_not_torchs_traceback(kind: str, tmp_path) -> None:
    """The free space is that of the folder written to: the file the error names (in a folder of its own here), else
    the working directory (outside Hydra; under Hydra the run's output folder). It was always the working directory's,
    which hydra.run.dir can put on another disk."""
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "export" / "model.onnx"  # export/ not made yet: its nearest existing folder counts
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, kind, str(target)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    folder = tmp_path / "out" if kind == "oserror" else tmp_path
    assert "disk is" in line and f" MB free in {folder})" in line and "hydra.run.dir=" in line, line


def test_other_errors_keep_their_traceback() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "bug"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "ValueError: a bug keeps its traceback" in proc.stderr


def test_shared_memory_full_names_the_workers() -> None:
    err = RuntimeError("unable to write to file </torch_123_456_7>: No space left on device (28)")
    assert "shared memory (/dev/shm) is full" in str(find_user_error(err))
    assert find_user_error(OSError(errno.EACCES, "Permission denied")) is None
