"""tuning_log.py: MetaSchedule's JSON databases; damaged lines reported and set aside."""

import json
import shutil

import pytest
from support import record_lines

from parcnet_tvm import ParcnetError
from parcnet_tvm.tuning_log import RECORD_FILE, WORKLOAD_FILE, open_database


def test_corrupt_and_truncated_lines_are_reported_and_set_aside(tiny_run, tmp_path):
    work = tmp_path / "log"
    shutil.copytree(tiny_run[0] / "log", work)
    records = record_lines(work)
    workloads = (work / WORKLOAD_FILE).read_text().splitlines()
    # a garbage line in the middle, a half-written record at the end (no newline), and the
    # first workload corrupt: its records go too, and the others are renumbered
    (work / WORKLOAD_FILE).write_text("".join(w + "\n" for w in ["{not json"] + workloads[1:]))
    damaged = records[:3] + ["garbage ]]"] + records[3:] + [records[0][: len(records[0]) // 2]]
    (work / RECORD_FILE).write_text("\n".join(damaged))
    messages = []
    database = open_database(work, log=messages.append)
    text = "\n".join(messages)
    assert f"{work / WORKLOAD_FILE}:1:" in text
    assert f"{work / RECORD_FILE}:4: not a tuning record" in text
    assert f"{work / RECORD_FILE}:{len(damaged)}: not a tuning record" in text
    on_first = sum(1 for r in records if json.loads(r)[0] == 0)
    assert len(database.get_all_tuning_records()) == len(records) - on_first
    rejected = (work / (RECORD_FILE + ".rejected")).read_text().splitlines()
    assert "garbage ]]" in rejected and len(rejected) == 2 + on_first
    assert (work / (WORKLOAD_FILE + ".rejected")).read_text() == "{not json\n"
    # valid JSON that MetaSchedule cannot load (a trace naming a block the workload lacks)
    lines = record_lines(work)
    (work / RECORD_FILE).write_text("".join(line + "\n" for line in lines[:-1])
                                    + lines[-1].replace('"main"]', '"no_such_func"]') + "\n")
    messages.clear()
    database = open_database(work, log=messages.append)
    assert f"{work / RECORD_FILE}:{len(lines)}: MetaSchedule cannot load this record" in "\n".join(messages)
    assert len(database.get_all_tuning_records()) == len(lines) - 1
    text = "\n".join(messages)
    # the repaired files stay valid for appends: a second open reports nothing
    assert open_database(work, log=messages.append) and len(messages) == len(text.splitlines())


def test_a_file_that_is_not_one_record_per_line_is_refused_and_left_as_it_is(tiny_run, tmp_path):
    """A pretty-printed array of records (valid JSON, wrong layout) is not a damaged log: no
    line-by-line repair, which would set every line aside and empty the file."""
    work = tmp_path / "log"
    shutil.copytree(tiny_run[0] / "log", work)
    records = [json.loads(line) for line in record_lines(work)]
    (work / RECORD_FILE).write_text(json.dumps(records, indent=2))
    before = (work / RECORD_FILE).read_bytes()
    with pytest.raises(ParcnetError, match="is not a MetaSchedule log: none of its .* lines is a record"):
        open_database(work)
    assert (work / RECORD_FILE).read_bytes() == before and not list(work.glob("*.rejected"))


def test_a_log_that_cannot_be_written_is_read_without_repairing_it(tiny_run, tmp_path, monkeypatch):
    from parcnet_tvm import tuning_log

    work = tmp_path / "log"
    shutil.copytree(tiny_run[0] / "log", work)
    lines = record_lines(work)
    (work / RECORD_FILE).write_text("".join(line + "\n" for line in lines) + "garbage ]]\n")
    before = (work / RECORD_FILE).read_bytes()
    monkeypatch.setattr(tuning_log, "_writable", lambda _dir: False)  # as for another user's log (we run as root)
    database = open_database(work, log=lambda *_: None)
    assert len(database.get_all_tuning_records()) == len(lines)
    assert (work / RECORD_FILE).read_bytes() == before and not list(work.glob("*.rejected"))
