"""kcnn.saving: one resolver for RUN_DIR | MODEL.keras | MODEL.tflite, used by every command."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kcnn.cli.main import app
from kcnn.errors import KcnnError
from kcnn.saving import resolve, resolve_model_file, run_of_file
from tests.conftest import TINY, write_recipe


@pytest.fixture
def fake_run(tmp_path):
    """A run dir layout with a recipe and a (tiny, untrained) model.keras."""
    import keras

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_recipe(run / "recipe.yaml", TINY)
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    model.save(run / "model.keras")
    return run


def test_resolve_kinds(fake_run):
    ref = resolve(fake_run)
    assert (ref.kind, ref.model_path, ref.run.path) == ("run", fake_run / "model.keras", fake_run)
    assert ref.load_recipe().name == "tiny"
    keras_ref = resolve(fake_run / "model.keras")
    assert keras_ref.kind == "keras" and keras_ref.run.path == fake_run
    tflite = fake_run / "exports" / "int8" / "model.tflite"
    tflite.parent.mkdir(parents=True)
    tflite.write_bytes(b"not really")
    tflite_ref = resolve(tflite)
    assert tflite_ref.kind == "tflite" and tflite_ref.run.path == fake_run
    assert run_of_file(fake_run.parent / "elsewhere.keras") is None
    model = keras_ref.load_model()
    assert model.outputs[0].shape[-1] == 10


def test_resolve_errors_share_one_form(tmp_path, fake_run):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(KcnnError, match=r"notes.txt: expected a run directory, a .keras file or "
                                         r"a .tflite file \(got a .txt file\)$"):
        resolve(tmp_path / "notes.txt")
    with pytest.raises(KcnnError, match=r"model.keras: expected a run directory \(got a .keras"):
        resolve(fake_run / "model.keras", kinds=("run",))
    with pytest.raises(KcnnError, match=r"nowhere: no such run directory"):
        resolve(tmp_path / "nowhere", kinds=("run",))
    with pytest.raises(KcnnError, match=r"gone.keras: model file not found"):
        resolve(tmp_path / "gone.keras")
    (fake_run / "model.keras").unlink()
    with pytest.raises(KcnnError, match=r"run has no model.keras yet"):
        resolve(fake_run)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KcnnError, match=r"not a kcnn run \(no recipe.yaml\)"):
        resolve(empty)


def test_resolve_model_file_picks_the_newest_run(tmp_path, fake_run):
    runs = tmp_path / "runs"
    for stamp in ("20250101-000000", "20250102-000000"):
        (runs / stamp).mkdir(parents=True)
        (runs / stamp / "model.keras").write_bytes(b"")
    (runs / ".20250103-000000.tmp").mkdir()  # a half-written run is never picked
    (runs / ".20250103-000000.tmp" / "model.keras").write_bytes(b"")
    assert resolve_model_file(runs, "model.init.from") == (
        runs / "20250102-000000" / "model.keras").resolve()
    assert resolve_model_file(fake_run, "k") == (fake_run / "model.keras").resolve()
    with pytest.raises(KcnnError, match=r"^distill.teacher: no trained teacher at .*nothing \("):
        resolve_model_file(tmp_path / "nothing", "distill.teacher", noun="teacher")


ANY = "a run directory, a .keras file or a .tflite file"
RUN_OR_KERAS = "a run directory or a .keras file"


@pytest.mark.parametrize("command,expected", [
    (["evaluate"], ANY),
    (["export"], "a run directory"),
    (["visualize"], RUN_OR_KERAS),
    (["convert", "--fully-convolutional"], RUN_OR_KERAS),
    (["compress", "prune"], "a run directory"),
    (["compress", "lowrank", "--rank", "1"], "a run directory"),
])
def test_every_command_gives_the_same_error_for_a_non_model_path(command, expected, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    result = CliRunner().invoke(app, [*command, str(tmp_path / "notes.txt")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].endswith(
        f"notes.txt: expected {expected} (got a .txt file)")
