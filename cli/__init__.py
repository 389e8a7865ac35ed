"""mptcpctl command-line interface (click + rich)."""
