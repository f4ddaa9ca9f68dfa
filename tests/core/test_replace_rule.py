"""A command replaces only what it wrote: a folder written whole carries a marker naming its writer, and any
other existing path (a file, a folder of the user's own, another command's folder) is refused with exit
status 2, naming it, and left as it was."""
from __future__ import annotations

import pytest
from conftest import write_config

from melanoma import cli
from melanoma.core import io_utils
from melanoma.core.errors import ConfigError


def write(path, command: str, text: str = "new") -> None:
    with io_utils.folder_written_whole(str(path), command=command) as folder:
        with open(f"{folder}/result.txt", "w") as handle:
            handle.write(text)


def test_a_command_replaces_its_own_folder_and_marks_it(tmp_path):
    out = tmp_path / "out"
    write(out, "shift", "first")
    assert io_utils.writer_of(str(out)) == "shift"
    write(out, "shift", "second")  # a rerun over its own output
    assert (out / "result.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it


def test_a_file_a_foreign_folder_or_another_commands_folder_is_refused_untouched(tmp_path):
    a_file = tmp_path / "my.yaml"
    a_file.write_text("name: mine\n")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "ideas.txt").write_text("keep me")
    records = tmp_path / "records"
    write(records, "records")
    for path, said in ((a_file, "is a file"), (notes, "ideas.txt"), (records, "written by `records`")):
        with pytest.raises(ConfigError, match=said) as refused:
            write(path, "shift")
        assert str(path) in str(refused.value)
    assert a_file.read_text() == "name: mine\n" and (notes / "ideas.txt").read_text() == "keep me"
    assert (records / "result.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.yaml", "notes", "records"]  # no temporary left


def test_an_empty_folder_or_one_vouched_for_is_replaced(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty", "shift")
    old = tmp_path / "old"
    old.mkdir()
    (old / "shift.json").write_text("{}")  # written before folders carried the marker
    with io_utils.folder_written_whole(str(old), command="shift", own=lambda names: names == ["shift.json"]):
        pass
    assert not (old / "shift.json").exists() and io_utils.writer_of(str(old)) == "shift"


def test_shift_out_on_a_file_or_a_foreign_folder_is_refused_before_any_work(tiny_data, tmp_path, capsys,
                                                                              monkeypatch):
    from melanoma.evaluate import shift

    monkeypatch.setattr(shift, "adversarial_validation", lambda *args, **kwargs: pytest.fail("worked anyway"))
    config = write_config(tmp_path, tiny_data)
    my_yaml = tmp_path / "my.yaml"
    my_yaml.write_text("name: mine\n")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "run-copy.txt").write_text("keep me")
    for out in (my_yaml, notes):
        assert cli.main(["shift", "--config", str(config), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert str(out) in err and "Traceback" not in err and err.count("\n") == 1, err
    assert my_yaml.read_text() == "name: mine\n" and (notes / "run-copy.txt").read_text() == "keep me"


def test_records_refuses_a_foreign_folder_and_reruns_over_its_own(jpeg_data, tmp_path, capsys):
    from conftest import records_argv

    out = tmp_path / "records"
    assert cli.main(records_argv(jpeg_data, out)) == 0
    assert io_utils.writer_of(str(out)) == "records"
    assert cli.main(records_argv(jpeg_data, out)) == 0  # its own folder: replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("keep me")
    assert cli.main(records_argv(jpeg_data, mine)) == 2
    assert "notes.md" in capsys.readouterr().err and (mine / "notes.md").read_text() == "keep me"
