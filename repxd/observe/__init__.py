"""Logging (journald fields), Prometheus metrics and systemd notifications."""
