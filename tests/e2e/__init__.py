"""End-to-end tests: the lab (a real cluster on this machine) with TideTune installed by its
chart, driven by kubectl and clients."""
