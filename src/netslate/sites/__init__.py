"""Branch sites (issue 15, docs/sites.md): the lab that builds a central primary and a branch standby."""
