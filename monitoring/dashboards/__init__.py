"""Dashboards over the panels of `monitoring.panels`: the Grafana JSON and the page
`plum dashboard` serves. Neither holds a query of its own."""
