"""Sites and their subnets: a client address maps to a site by longest-prefix match, and each
client is sent to its own site's servers first (netslate.discovery)."""

from __future__ import annotations

from pydantic import BaseModel

from netslate.discovery import store
from netslate.services.framework import Service, op
from netslate.services.servers import Server


class SiteSubnets(BaseModel):
    """A site after a subnet change: its subnets, without the servers."""

    name: str
    description: str
    created_at: str
    subnets: list[str]


class SiteRecord(SiteSubnets):
    servers: list[str]  # names of the servers registered in this site


class SiteDetail(SiteSubnets):
    servers: list[Server]  # with their heartbeat state


class SitesService(Service):
    noun = "sites"

    @op("GET", "/api/v1/sites")
    def list(self) -> list[SiteRecord]:
        """Sites with their subnets and servers."""
        raise NotImplementedError

    @op("POST", "/api/v1/sites", role="operator", status=201)
    def add(self, name: str, description: str = "") -> SiteRecord:
        """Add a site."""
        raise NotImplementedError

    @op("GET", "/api/v1/sites/{name}")
    def show(self, name: str) -> SiteDetail:
        """One site: subnets and servers (with heartbeat state)."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/sites/{name}", role="operator", status=204)
    def remove(self, name: str) -> None:
        """Remove a site and its subnets (its servers answer as site-less)."""
        raise NotImplementedError

    @op("POST", "/api/v1/sites/{name}/subnets", role="operator", status=201)
    def add_subnet(self, name: str, cidr: str) -> SiteSubnets:
        """Map a subnet (IPv4 or IPv6 CIDR) to a site; the longest matching prefix wins."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/sites/{name}/subnets", role="operator")
    def remove_subnet(self, name: str, cidr: str) -> SiteSubnets:
        """Remove a subnet from a site."""
        raise NotImplementedError


class LocalSites(SitesService):
    def list(self) -> list[SiteRecord]:
        return [SiteRecord(**d) for d in store.list_sites(self.parts.ctx)]

    def add(self, name: str, description: str = "") -> SiteRecord:
        return SiteRecord(**store.add_site(self.parts.ctx, name, description, actor=self.actor))

    def show(self, name: str) -> SiteDetail:
        return SiteDetail(**store.show_site(self.parts.ctx, name))

    def remove(self, name: str) -> None:
        store.remove_site(self.parts.ctx, name, actor=self.actor)

    def add_subnet(self, name: str, cidr: str) -> SiteSubnets:
        return SiteSubnets(**store.add_subnet(self.parts.ctx, name, cidr, actor=self.actor))

    def remove_subnet(self, name: str, cidr: str) -> SiteSubnets:
        return SiteSubnets(**store.remove_subnet(self.parts.ctx, name, cidr, actor=self.actor))
