"""The bundled recipes: all validate; the family recipes carry the papers' settings; two
digits variants train for an epoch."""

import json

import keras
import pytest

from kcnn.recipes import load
from kcnn.recipes.load import RECIPES_DIR

ALL = sorted(RECIPES_DIR.glob("*.yaml"))
PAPER_RESULTS = {
    "resnet20_cifar10": "8.75%",
    "resnet56_cifar10": "6.97%",
    "nin_cifar10": "10.41%",
    "nin_cifar10_augment": "8.81%",
    "highway_cifar10": "7.54%",
    "alexnet_images": "37.5%",
    "vgg16_images": "8.8%",
}
DIGITS_VARIANTS = {
    "alexnet_digits": "alexnet",
    "vgg_digits": "vgg",
    "nin_digits": "nin",
    "resnet_digits": "resnet",
    "highway_digits": "highway",
    "layers_digits": "layers",
    "squeezenet_digits": "squeezenet",
    "mobilenet_digits": "mobilenet",
    "shufflenet_digits": "shufflenet",
}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_every_bundled_recipe_validates(path):
    recipe = load(path)
    assert recipe.name


@pytest.mark.parametrize("stem, result", PAPER_RESULTS.items())
def test_family_recipes_name_the_paper_result(stem, result):
    recipe = load(RECIPES_DIR / f"{stem}.yaml")
    assert recipe.name == stem
    assert result in recipe.description and "\n" not in recipe.description


def test_resnet_cifar_schedule_follows_the_paper():
    r = load(RECIPES_DIR / "resnet20_cifar10.yaml")
    assert (r.data.source.type, r.data.source.name) == ("keras", "cifar10")
    assert (r.data.augment.crop_padding, r.data.augment.flip) == (4, True)
    opt = r.train.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert r.train.batch_size == 128
    # 32k / 48k / 64k iterations at ⌈50000 / 128⌉ = 391 steps per epoch
    assert r.train.schedule.boundaries == [82, 123] and r.train.epochs == 164
    assert r.model.name == "resnet20" and load(RECIPES_DIR / "resnet56_cifar10.yaml").model.name == "resnet56"


def test_image_folder_recipes_validate_without_the_folder():
    r = load(RECIPES_DIR / "alexnet_images.yaml")
    assert r.data.source.type == "directory" and tuple(r.data.source.image_size) == (227, 227)
    assert r.model.name == "alexnet" and r.model.kwargs["groups"] == 2


@pytest.mark.parametrize("stem, family", DIGITS_VARIANTS.items())
def test_each_family_has_a_digits_variant(stem, family):
    r = load(RECIPES_DIR / f"{stem}.yaml")
    assert r.data.source.type == "digits" and r.model.name.startswith(family)


@pytest.mark.slow
@pytest.mark.parametrize("stem", ["alexnet_digits", "highway_digits"])
def test_digits_variant_trains_an_epoch(stem, tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the training engine's data pipeline is tf.data")
    from kcnn.engine.train import train

    # One epoch of small batches at the recipe's peak learning rate, without dropout. (These
    # two families have no batch normalization, whose moving statistics lag after one epoch.)
    recipe = load(RECIPES_DIR / f"{stem}.yaml",
                  ["train.epochs=1", "train.batch_size=16", "train.schedule={type: constant}",
                   "model.dropout=0.0",
                   "train.verbose=0", "evaluate.plots=false", "train.callbacks.tensorboard=false"])
    run = train(recipe, run_dir=tmp_path / stem)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.3  # ten classes: chance is 0.1
    assert (run / "model.keras").is_file()
