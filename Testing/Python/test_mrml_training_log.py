"""The engine's log.csv read as it grows: complete new rows only, columns by name."""

import math

from VoxelMorphRegLib.mrml import training_log as tl


def test_log_reader_returns_only_complete_new_rows(tmp_path):
    path = tmp_path / "log.csv"
    reader = tl.TrainingLogReader(path)
    assert reader.read_new() == []  # not there yet
    path.write_text("step,loss,similarity,smoothness,dice_loss,learning_rate,seconds_per_step,validation_dice\n1,0.5,0.4,0.1,0,0.0003,1.2,\n2,0.4")
    rows = reader.read_new()
    assert [(r.step, r.loss) for r in rows] == [(1, 0.5)] and math.isnan(rows[0].validation_dice)
    assert rows[0].values["seconds_per_step"] == 1.2
    with path.open("a") as stream:
        stream.write("5,0.3,0.2,0,0.0003,1.1,0.61\n3,0.35,0.3,0.1,0,0.0003,1.1,\n")
    rows = reader.read_new()
    assert [(r.step, r.loss, r.validation_dice) for r in rows[:1]] == [(2, 0.45, 0.61)]
    assert [r.step for r in rows] == [2, 3]
    assert reader.read_new() == []
