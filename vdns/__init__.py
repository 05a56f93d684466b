"""vdns: the virtual DNS harness: .mds domain files, per-domain DNS servers, whole hierarchies."""
