"""Discovery: sites and subnets, registered netslate servers, site-aware DNS SRV answers and locate.

`core.py` is pure (ordering, SRV records, exports); `store.py` reads and writes the database;
`dns.py` is the dnslib responder; `service.py` hooks heartbeat and DNS into `netslate serve`.
"""
