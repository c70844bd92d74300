"""End-to-end tests: the lab (API emulator, S3, operator) driven by kubectl and clients."""
