"""Training recipes, one file per method (torchtune style): setup, train, save.

``get_recipe(method)`` returns the recipe's ``run(session)`` function. Methods: ``sft``
(:mod:`.sft`), ``cpt`` (:mod:`.cpt`), ``dpo`` (:mod:`.dpo`), ``grpo`` (:mod:`.grpo`) and
``ppo`` (:mod:`.ppo`). An unknown method raises
:class:`~tidetune_trainer.errors.UnsupportedError` naming ``spec.method``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from tidetune_trainer.errors import UnsupportedError

#: method → module with ``run(session)``
RECIPES: dict[str, str] = {
    "sft": "tidetune_trainer.recipes.sft",
    "cpt": "tidetune_trainer.recipes.cpt",
    "dpo": "tidetune_trainer.recipes.dpo",
    "grpo": "tidetune_trainer.recipes.grpo",
    "ppo": "tidetune_trainer.recipes.ppo",
}


def get_recipe(method: str) -> Callable[[Any], None]:
    """The ``run(session)`` of ``method``'s recipe.

    Raises :class:`UnsupportedError` for unknown methods.
    """
    module = RECIPES.get(method)
    if module is None:
        raise UnsupportedError(
            f"spec.method: {method!r} is not yet supported by this trainer; supported: "
            f"{', '.join(RECIPES)}"
        )
    run: Callable[[Any], None] = importlib.import_module(module).run
    return run
