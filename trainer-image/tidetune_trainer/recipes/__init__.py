"""Training recipes, one file per method (torchtune style): setup, train, save.

``get_recipe(method)`` returns the recipe's ``run(session)`` function. Methods: ``sft``
(:mod:`.sft`), ``cpt`` (:mod:`.cpt`), ``dpo`` (:mod:`.dpo`), ``grpo`` (:mod:`.grpo`) and
``ppo`` (:mod:`.ppo`). An unknown method raises
:class:`~tidetune_trainer.errors.UnsupportedError` naming ``spec.method``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tidetune_trainer.errors import UnsupportedError
from tidetune_trainer.recipes import cpt, dpo, grpo, ppo, sft

if TYPE_CHECKING:
    from tidetune_trainer.session import Session

#: method → its recipe's ``run(session)``
RECIPES: dict[str, Callable[[Session], None]] = {
    "sft": sft.run,
    "cpt": cpt.run,
    "dpo": dpo.run,
    "grpo": grpo.run,
    "ppo": ppo.run,
}


def get_recipe(method: str) -> Callable[[Session], None]:
    """The ``run(session)`` of ``method``'s recipe.

    Raises :class:`UnsupportedError` for unknown methods.
    """
    run = RECIPES.get(method)
    if run is None:
        raise UnsupportedError(
            f"spec.method: {method!r} is not yet supported by this trainer; supported: "
            f"{', '.join(RECIPES)}"
        )
    return run
