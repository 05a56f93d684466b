"""client: the `mdns` command: resolve bookmarks, run hierarchies, register and search."""
