"""The web tests' login directory: the test slapd (`ldap_world`) registered as directory `corp`,
its groups mapped to roles (netslate-admins → admin, netslate-operators → operator,
netslate-viewers → viewer). Shared by the browser tests of tests/web/."""

from __future__ import annotations

from netslate.services.directories import DirectoryCreate
from netslate.services.entitlements import EntitlementCreate
from netslate.services.framework import Caller

ADMIN = Caller("local", "setup", "admin")
ROLE_GROUPS = (("netslate-admins", "admin"), ("netslate-operators", "operator"), ("netslate-viewers", "viewer"))


def use_test_directory(sv, ldap_world) -> None:
    """Register the test slapd as the login directory and give its groups their roles (`sv`: Services)."""
    sv.directories.add(DirectoryCreate(name="corp", uri=ldap_world.uri, base_dn=ldap_world.base_dn, bind_dn=ldap_world.bind_dn,
                                       bind_password=ldap_world.bind_password, ca_pem=ldap_world.ca_pem))
    for group, role in ROLE_GROUPS:
        sv.entitlements.add(EntitlementCreate(subject_kind="group", subject=group, grant="role", value=role))
