"""The divergence guard: a non-finite step is caught at the step it happens, whatever
`train.log_every` is, before a checkpoint holds it; "skip" keeps the state and goes on."""

import numpy as np
import pytest
from test_cli_train import metric_rows, train_tiny

from clipjax.checkpoint import Checkpoints, read_params
from clipjax.train.program import StepProgram

EVERY_STEP = ["--config.checkpoint.every=1", "--config.checkpoint.keep=0"]


@pytest.fixture
def nan_images_at(monkeypatch):
    """`nan_images_at({3, 4})`: the batches of those steps carry NaN pixels (float32;
    the step passes floats through its normaliser), so their loss is NaN."""

    def poison(steps: set[int]) -> None:
        place = StepProgram.place_batch
        calls = {"n": 0}

        def placed(self, batch):
            calls["n"] += 1  # the loop places step k's batch on its k-th call
            if calls["n"] in steps:
                batch = {**batch, "image": np.full(batch["image"].shape, np.nan, np.float32)}
            return place(self, batch)

        monkeypatch.setattr(StepProgram, "place_batch", placed)

    return poison


def saved_steps(workdir) -> list[int]:
    return Checkpoints(workdir / "checkpoints", every=1, keep=0, async_save=False).all_steps()


def test_a_nan_between_log_steps_stops_before_it_is_saved(
    tmp_path, digits_cache, capsys, nan_images_at
):
    nan_images_at({3})
    code = train_tiny(tmp_path, digits_cache, "--config.train.steps=8", *EVERY_STEP)
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite loss, gradients, parameters at step 3;" in err
    assert saved_steps(tmp_path) == [1, 2]
    for step in (1, 2):
        params, _ = read_params(tmp_path / "checkpoints", step)
        assert all(np.isfinite(v).all() for v in params.values())


def test_skip_keeps_the_state_of_a_nan_step_and_goes_on(
    tmp_path, digits_cache, capsys, nan_images_at
):
    nan_images_at({3})
    extra = ["--config.train.on_nonfinite='skip'", "--config.train.log_every=1"]
    code = train_tiny(tmp_path, digits_cache, "--config.train.steps=5", *EVERY_STEP, *extra)
    assert code == 0, capsys.readouterr().err
    params = {step: read_params(tmp_path / "checkpoints", step)[0] for step in (2, 3, 4)}
    for name, value in params[2].items():
        np.testing.assert_array_equal(params[3][name], value, err_msg=name)
    assert any(not np.array_equal(params[4][n], params[3][n]) for n in params[3])
    rows = {row["step"]: row for row in metric_rows(tmp_path)}
    assert [rows[s]["train/skipped_steps"] for s in (2, 3, 4, 5)] == [0, 1, 1, 1]
    assert "train/loss" not in rows[3] and np.isfinite(rows[4]["train/loss"])


@pytest.mark.slow
def test_skip_stops_after_too_many_in_a_row(tmp_path, digits_cache, capsys, nan_images_at):
    nan_images_at({3, 4, 5})
    extra = ["--config.train.on_nonfinite='skip'", "--config.train.max_skipped_in_a_row=2"]
    code = train_tiny(tmp_path, digits_cache, "--config.train.steps=8", *EVERY_STEP, *extra)
    assert code == 1
    assert "2 steps in a row skipped (train.max_skipped_in_a_row), the last at step 4" in (
        capsys.readouterr().err
    )
    assert saved_steps(tmp_path) == [1, 2, 3]  # step 3 saved the unchanged state


def test_a_wrong_policy_is_a_config_error(tmp_path, digits_cache, capsys):
    code = train_tiny(tmp_path, digits_cache, "--config.train.on_nonfinite='ignore'")
    assert code == 2
    assert "train.on_nonfinite='ignore' is not one of ('stop', 'skip')" in capsys.readouterr().err
