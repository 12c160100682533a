import polars as pl
import pytest

from aiopt_lib.core.atomic import atomic_open, write_parquet_atomic, write_text_atomic


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "report.txt"
    write_text_atomic(target, "complete")

    def interrupted_write() -> None:
        with atomic_open(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def test_failed_first_write_creates_nothing(tmp_path):
    target = tmp_path / "sub" / "x.parquet"
    frame = pl.DataFrame({"a": [1, 2]})

    def killed_write() -> None:
        with atomic_open(target, "wb") as fh:
            fh.write(b"PAR1")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        killed_write()
    assert not target.exists()
    write_parquet_atomic(frame, target, metadata={"k": "v"})
    assert pl.read_parquet(target).equals(frame)
    assert pl.read_parquet_metadata(target)["k"] == "v"


def test_atomic_open_refuses_append(tmp_path):
    with pytest.raises(ValueError, match="write mode"), atomic_open(tmp_path / "x", "a"):
        pass


def test_atomic_directory_replaces_a_folder_whole_or_not_at_all(tmp_path):
    from aiopt_lib.core.atomic import atomic_directory

    target = tmp_path / "catalog"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def interrupted() -> None:
        with atomic_directory(target) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        interrupted()
    assert [p.name for p in target.iterdir()] == ["old.txt"]  # untouched
    with atomic_directory(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog"]  # nothing left beside it
