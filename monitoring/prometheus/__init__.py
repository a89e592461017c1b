"""Prometheus for the stack: its config (`config`), the scrape file (`scrape`) and the
Debian `prometheus` binary run as a child process (`server`)."""
