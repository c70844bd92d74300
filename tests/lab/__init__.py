"""The lab: a real Kubernetes cluster on one machine (see lab.py and README, "The lab")."""
