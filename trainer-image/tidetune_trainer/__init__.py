"""TideTune trainer: what runs inside every training pod (and under ``tidetune run``).

Subpackages and modules:

- ``tidetune_trainer.data`` — reading, validating, splitting, tokenizing and packing
  training data (every format of the FineTuneJob spec), plus ``tidetune data stats``.
- ``tidetune_trainer.tiny`` — ``builtin://tiny-llama`` (a smoke-test model built from
  config, with a tokenizer trained on the job's own texts) and the loader for real
  models from local, ``pvc://`` or ``s3://`` directories.

Importing this package is cheap: torch and transformers are imported by the modules
that need them.
"""

__all__: list[str] = []
