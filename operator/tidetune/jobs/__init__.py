"""Commands for the people who run jobs: watch, compare, copy, cancel, try, evaluate,
publish and report — on a cluster job (``[NAMESPACE/]NAME`` through the kubeconfig) and on
a local run (``--workdir DIR``, the folder ``tidetune run`` used).

Everything here needs only the light package; commands that need torch (``chat``,
``generate``, ``eval``) import the trainer when called, and the cluster client
(``kubernetes``) and matplotlib are imported only by the commands that use them.
"""
