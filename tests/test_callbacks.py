import json
from types import SimpleNamespace

import pytest

from seqmodels.callbacks import PredictionWriter


def trainer(tmp_path):
    return SimpleNamespace(world_size=1, is_global_zero=True, logger=SimpleNamespace(log_dir=str(tmp_path)),
                           default_root_dir=str(tmp_path))


def test_records_are_written_in_index_order_without_the_index(tmp_path):
    writer = PredictionWriter(str(tmp_path / "out.jsonl"))
    batches = [[{"index": 2, "text": "c"}, {"index": 0, "text": "a"}], [{"index": 1, "text": "b"}]]
    writer.write_on_epoch_end(trainer(tmp_path), SimpleNamespace(), batches, [])
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines == [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left behind


def test_the_format_follows_the_file_name_and_the_default_is_the_tasks_file(tmp_path):
    module = SimpleNamespace(prediction_file="forecast.csv")
    PredictionWriter().write_on_epoch_end(trainer(tmp_path), module, [[{"date": "2024-01", "forecast": 1.5}]], [])
    assert (tmp_path / "forecast.csv").read_text().splitlines() == ["date,forecast", "2024-01,1.5"]
    PredictionWriter(str(tmp_path / "g.txt")).write_on_epoch_end(trainer(tmp_path), module, [{"text": "To be"}], [])
    assert (tmp_path / "g.txt").read_text() == "To be"


def test_an_output_in_a_missing_folder_is_refused_before_predicting(tmp_path):
    writer = PredictionWriter(str(tmp_path / "nowhere" / "out.jsonl"))
    with pytest.raises(FileNotFoundError, match="the folder .*nowhere does not exist"):
        writer.on_predict_start(trainer(tmp_path), SimpleNamespace())
