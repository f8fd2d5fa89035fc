"""HTTP: agent links, health, metrics."""
