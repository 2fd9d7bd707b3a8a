"""NetAdapt engine: latency-driven channel pruning of trained CNNs."""
