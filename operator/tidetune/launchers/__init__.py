"""Launchers: what turns an admitted FineTuneJob into running trainer processes.

``tidetune.launchers.local.LocalProcessLauncher`` runs a job as local ``torchrun``
processes (``tidetune run``, the lab, the tests); the PyTorchJob launcher lives in the
operator package.
"""
