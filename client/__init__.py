"""client: the `mdns` command: resolve bookmarks, run hierarchies, and (later) register and search."""
