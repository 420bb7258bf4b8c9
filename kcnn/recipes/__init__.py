"""Recipes: schema and loader. Importing this package never imports TensorFlow."""

from kcnn.recipes.load import dump, load, loads
from kcnn.recipes.schema import Recipe

__all__ = ["Recipe", "dump", "load", "loads"]
