"""TideTune: fine-tune LLMs on a Kubernetes cluster's idle GPUs.

This light package holds what both images need: the typed API (``tidetune.api``),
CRD generation, manifest validation, the estimate, object storage and the CLI. It
imports neither torch nor kopf.
"""

__version__ = "0.1.0"
