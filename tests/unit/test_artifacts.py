import pytest

from tasks.artifacts import atomic_directory, atomic_path, read_json, write_json
from tasks.config import MlcycleError


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
