"""LDAP / Active Directory settings for people's logins. The bind password goes in, never out."""

from __future__ import annotations

from pydantic import BaseModel, Field

from netslate.identity import directories as part
from netslate.services.framework import Service, op


class DirectoryRecord(BaseModel):
    name: str
    kind: str
    uri: str
    tls: str
    base_dn: str
    bind_dn: str
    user_filter: str
    group_attribute: str
    position: int
    ca_subject: str
    bind_password_set: bool


class DirectoryCreate(BaseModel):
    name: str = Field(max_length=63)
    kind: str = "ldap"  # ldap | ad
    uri: str = Field(max_length=512)
    base_dn: str = Field(max_length=1024)
    bind_dn: str = Field(max_length=1024)
    bind_password: str = Field(max_length=1024)
    ca_pem: str = Field(max_length=65536)
    tls: str | None = None  # ldaps | starttls; from the URI when not given
    user_filter: str | None = Field(default=None, max_length=1024)
    group_attribute: str | None = None


class UserProbe(BaseModel):
    dn: str
    refused: str | None
    groups: list[dict]


class DirectoryTest(BaseModel):
    directory: str
    uri: str
    tls: str
    tls_version: str | None
    bind_dn: str
    base_dn: str
    ok: bool
    connect_bind_ms: float
    total_ms: float
    user_found: bool | None = None
    user: UserProbe | None = None


class DirectoriesService(Service):
    noun = "directories"

    @op("GET", "/api/v1/directories", role="viewer")
    def list(self) -> list[DirectoryRecord]:
        """List directories in login order (no bind passwords)."""
        raise NotImplementedError

    @op("GET", "/api/v1/directories/{name}", role="viewer")
    def show(self, name: str) -> DirectoryRecord:
        """One directory's settings (no bind password)."""
        raise NotImplementedError

    @op("POST", "/api/v1/directories", role="admin", status=201)
    def add(self, request: DirectoryCreate) -> DirectoryRecord:
        """Add an LDAP or AD directory (LDAPS or StartTLS, CA verified)."""
        raise NotImplementedError

    @op("POST", "/api/v1/directories/{name}/test", role="admin")
    def test(self, name: str, username: str | None = None) -> DirectoryTest:
        """Connect, bind as the service account, read the base DN; optionally find a user and their groups."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/directories/{name}", role="admin", status=204)
    def remove(self, name: str) -> None:
        """Remove a directory."""
        raise NotImplementedError


class LocalDirectories(DirectoriesService):
    def list(self) -> list[DirectoryRecord]:
        return [DirectoryRecord(**d) for d in part.list_directories(self.parts.ctx)]

    def show(self, name: str) -> DirectoryRecord:
        return DirectoryRecord(**part.show_directory(self.parts.ctx, name))

    def add(self, request: DirectoryCreate) -> DirectoryRecord:
        r = request
        return DirectoryRecord(**part.add_directory(self.parts.ctx, r.name, r.kind, r.uri, r.base_dn, r.bind_dn, r.bind_password,
                                                    r.ca_pem, r.tls, r.user_filter, r.group_attribute, actor=self.actor))

    def test(self, name: str, username: str | None = None) -> DirectoryTest:
        return DirectoryTest(**part.probe(part.settings(self.parts.ctx, name)[0], username))

    def remove(self, name: str) -> None:
        part.remove_directory(self.parts.ctx, name, actor=self.actor)
