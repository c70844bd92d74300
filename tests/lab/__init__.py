"""The lab: ``python -m tests.lab --dir DIR`` (see :mod:`tests.lab.lab`)."""

from tests.lab.lab import Lab, LabComponent, SupervisedProcess

__all__ = ["Lab", "LabComponent", "SupervisedProcess"]
