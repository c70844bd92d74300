"""The lab: a real Kubernetes cluster on one machine (see cluster.py, deploy.py and README,
"The lab")."""
