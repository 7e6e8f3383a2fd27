import pytest

from tasks.core.errors import MlcycleError
from tasks.core.files import OutputError, atomic_directory, atomic_path, read_json, write_json


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_atomic_directory_swaps_whole_folders(tmp_path):
    target = tmp_path / "raw"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("crash")
    assert [p.name for p in target.iterdir()] == ["a"]
    with atomic_directory(target) as tmp:
        (tmp / "c").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c"]
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_json_round_trip_and_clear_errors(tmp_path):
    write_json(tmp_path / "m.json", {"accuracy": 0.5})
    assert read_json(tmp_path / "m.json") == {"accuracy": 0.5}
    with pytest.raises(MlcycleError, match=r"absent\.json: not found"):
        read_json(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(MlcycleError, match=r"bad\.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_outputs_get_the_usual_permissions_not_private_temp_ones(tmp_path):
    from tasks.core.files import DIR_MODE, FILE_MODE

    with atomic_path(tmp_path / "metrics.json") as tmp:
        tmp.write_text("{}")
    with atomic_directory(tmp_path / "raw") as tmp:
        (tmp / "images.npy").write_bytes(b"x")
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == FILE_MODE
    assert (tmp_path / "raw").stat().st_mode & 0o777 == DIR_MODE
    assert (tmp_path / "raw" / "images.npy").stat().st_mode & 0o777 == FILE_MODE


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    import os

    target = tmp_path / "raw"
    with atomic_directory(target) as tmp:
        (tmp / "old").write_text("1")
    real_replace = os.replace

    def fail_on_swap_in(source, destination):
        if str(source).endswith(".tmp"):
            raise OSError("disk full")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", fail_on_swap_in)
    with pytest.raises(OSError, match="disk full"), atomic_directory(target) as tmp:
        (tmp / "new").write_text("2")
    monkeypatch.undo()
    assert [p.name for p in target.iterdir()] == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_an_output_whose_folder_is_a_file_is_named_in_one_line(tmp_path):
    """Root ignores permissions, so a file where the output folder belongs stands in for any
    folder that cannot be written."""
    (tmp_path / "artifacts").write_text("not a folder")
    with pytest.raises(
        OutputError, match=r"artifacts/model\.pt: cannot be written \(a file stands where a folder"
    ):
        write_json(tmp_path / "artifacts" / "model.pt", {})
    refused = pytest.raises(OutputError, match=r"artifacts/raw: cannot be written")
    with refused, atomic_directory(tmp_path / "artifacts" / "raw"):
        pass
