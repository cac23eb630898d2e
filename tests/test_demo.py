"""The demo's bookkeeping: per-stage times, the closing summary, one data set a workdir."""
import json
import time

import pytest
from absl import app

from experiments import demo


def test_stage_times_add_up_per_stage(capsys):
  minutes = {}
  with demo._stage(minutes, "gan", "training"):
    time.sleep(0.06)
  with demo._stage(minutes, "gan", "again"):
    time.sleep(0.06)
  with demo._stage(minutes, "data", "shards"):
    pass
  assert list(minutes) == ["gan", "data"]
  assert 0.12 / 60 <= minutes["gan"] < 1.0 / 60
  assert 0 <= minutes["data"] < minutes["gan"]
  assert "==== gan: training ====" in capsys.readouterr().out


def test_summary_lists_made_artefacts_and_stage_minutes(tmp_path):
  (tmp_path / "table1.md").write_text("t")
  (tmp_path / "judge").mkdir()
  text = demo.closing_summary(tmp_path, 754.0, {"data": 0.31, "gan": 7.71})
  first, *lines = text.splitlines()
  assert first == "Demo finished in 12.6 min (this run): data 0.3, gan 7.7."
  assert [line.split("`")[1] for line in lines] == ["table1.md", "judge"]
  assert (tmp_path / "summary.md").read_text() == text + "\n"
  assert demo.closing_summary(tmp_path, 60.0).splitlines()[0] == (
      "Demo finished in 1.0 min (this run).")


def test_a_workdir_made_from_other_shards_is_refused(tmp_path):
  demo.check_same_data(tmp_path, "/cache/phantom-v2-90scans-seed0/shards")
  demo.check_same_data(tmp_path, "/cache/phantom-v2-90scans-seed0/shards")   # the same: goes on
  with pytest.raises(app.UsageError, match="made from /cache/phantom-v2-90scans.*reads "
                     "/cache/phantom-v2-45scans"):
    demo.check_same_data(tmp_path, "/cache/phantom-v2-45scans-seed0/shards")
  assert (tmp_path / demo.DATA_RECORD).read_text() == "/cache/phantom-v2-90scans-seed0/shards\n"


def test_a_workdir_from_before_the_record_is_known_by_its_gan(tmp_path):
  (tmp_path / "gan").mkdir()
  (tmp_path / "gan" / "config.json").write_text(json.dumps({"data": {"data_dir": "/old"}}))
  with pytest.raises(app.UsageError, match="made from /old"):
    demo.check_same_data(tmp_path, "/new")
  assert not (tmp_path / demo.DATA_RECORD).exists()
  demo.check_same_data(tmp_path, "/old")
  assert (tmp_path / demo.DATA_RECORD).read_text() == "/old\n"
