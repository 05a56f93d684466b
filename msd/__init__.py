"""msd: the multicast session directory daemons, and the schema every part of mDNS shares."""
