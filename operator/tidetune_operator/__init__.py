"""The TideTune operator: reconciles FineTuneJobs into launched training jobs (no torch).

Run it with ``kopf run -A --standalone -m tidetune_operator.handlers`` (the Helm chart and
the lab do). Configuration: :mod:`tidetune_operator.config`.
"""
