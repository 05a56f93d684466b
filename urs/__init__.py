"""urs: the URL Registration Server that owns a domain's mcast.<domain>/<id> names."""
