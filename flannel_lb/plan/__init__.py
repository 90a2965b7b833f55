"""From cluster state to the desired load balancer: frontends, backends, reasons, reports."""
