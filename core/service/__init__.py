"""The service: the daemon loop, the state-directory lock, logging."""
