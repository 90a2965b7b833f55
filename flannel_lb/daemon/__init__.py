"""The long-running agent: its loop, metrics, logs and systemd notifications."""
