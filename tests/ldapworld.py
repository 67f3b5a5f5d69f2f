"""A real OpenLDAP (Debian `slapd`) for tests: own config, data directory and test CA, on loopback.

`ldap_world` (session-scoped, registered in tests/conftest.py) starts one slapd for the whole test
run, listening on ldap://127.0.0.1:<port> (StartTLS) and ldaps://127.0.0.1:<port>, with a
certificate signed by a CA made here. It never touches the system's slapd or /etc/ldap/slapd.d.

The directory (base dc=netslate,dc=test):
- service account `cn=netslate-reader,ou=services,...` (searches; anonymous reads are refused);
- `ada` ∈ netslate-admins, `oscar` ∈ netslate-operators, `vera` ∈ netslate-viewers;
- `alice` ∈ lab-a-users; `bob` ∈ lab-b-students ∈ lab-b-users (nested);
- `carol` ∈ coffee-club (a group no entitlement names), `nina` in no group at all;
- `dave` disabled (ppolicy `pwdAccountLockedTime: 000001010000Z`), in lab-a-users;
- `erin` expired (`shadowExpire: 1`, i.e. 1970-01-02), in lab-a-users;
- a user whose uid is `*)(uid=*` (LDAP filter characters), in no group.
Every user's password is in `world.passwords`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nstest import free_port

BASE_DN = "dc=netslate,dc=test"
HOSTILE = "*)(uid=*"
GROUPS = {  # group → members (users by uid, groups by "group:NAME")
    "netslate-admins": ["ada"],
    "netslate-operators": ["oscar"],
    "netslate-viewers": ["vera"],
    "lab-a-users": ["alice", "dave", "erin"],
    "lab-b-students": ["bob"],
    "lab-b-users": ["group:lab-b-students"],
    "coffee-club": ["carol"],
}
USERS = ["ada", "oscar", "vera", "alice", "bob", "carol", "nina", "dave", "erin", HOSTILE]


@dataclass
class LdapWorld:
    uri: str  # ldaps://127.0.0.1:PORT
    starttls_uri: str  # ldap://127.0.0.1:PORT (StartTLS)
    base_dn: str
    bind_dn: str
    bind_password: str
    ca_file: Path
    ca_pem: str
    passwords: dict[str, str]
    users: dict[str, str]  # uid → DN
    hostile: str = HOSTILE
    directory: Path = field(default=Path("."), repr=False)

    def user_dn(self, uid: str) -> str:
        return self.users[uid]

    def directory_args(self, name: str = "corp", starttls: bool = False) -> list[str]:
        """Arguments of `netslate directory add` for this world (the bind password goes on stdin)."""
        return ["directory", "add", name, "--uri", self.starttls_uri if starttls else self.uri, "--base-dn", self.base_dn,
                "--bind-dn", self.bind_dn, "--ca-file", str(self.ca_file), "--password-stdin"]


def _ssha(password: str) -> str:
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def _make_ca(directory: Path) -> tuple[str, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 / localhost: (CA PEM, cert file, key file)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netslate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    (directory / "ca.pem").write_text(ca_pem)
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_file, 0o600)
    return ca_pem, cert_file, key_file


def _ldif(passwords: dict[str, str], reader_password: str) -> tuple[str, dict[str, str]]:
    users = {uid: f"cn=user{i},ou=people,{BASE_DN}" for i, uid in enumerate(USERS)}
    out = [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: netslate\no: netslate test\n",
        f"dn: ou=people,{BASE_DN}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=groups,{BASE_DN}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: ou=services,{BASE_DN}\nobjectClass: organizationalUnit\nou: services\n",
        f"dn: cn=netslate-reader,ou=services,{BASE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: netslate-reader\nuserPassword: {_ssha(reader_password)}\n",
    ]
    for i, uid in enumerate(USERS):
        entry = (f"dn: {users[uid]}\nobjectClass: inetOrgPerson\nobjectClass: shadowAccount\ncn: user{i}\nsn: User {i}\n"
                 f"uid: {uid}\nuserPassword: {_ssha(passwords[uid])}\n")
        if uid == "dave":
            entry += "pwdAccountLockedTime: 000001010000Z\n"
        if uid == "erin":
            entry += "shadowExpire: 1\n"
        out.append(entry)
    for group, members in GROUPS.items():
        lines = [f"dn: cn={group},ou=groups,{BASE_DN}", "objectClass: groupOfNames", f"cn: {group}"]
        for m in members:
            lines.append(f"member: cn={m[6:]},ou=groups,{BASE_DN}" if m.startswith("group:") else f"member: {users[m]}")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out), users


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slapd exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"slapd did not listen on {port} within {timeout} s")


def start_ldap_world(directory: Path) -> tuple[LdapWorld, subprocess.Popen]:
    slapd = shutil.which("slapd") or "/usr/sbin/slapd"
    slapadd = shutil.which("slapadd") or "/usr/sbin/slapadd"
    if not Path(slapd).exists():
        raise RuntimeError("slapd is missing: run scripts/install-deps.sh (Debian packages slapd, ldap-utils)")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "db").mkdir(exist_ok=True)
    ca_pem, cert_file, key_file = _make_ca(directory)
    passwords = {uid: f"pw-{hashlib.sha256(uid.encode()).hexdigest()[:10]}!" for uid in USERS}
    reader_password = "reader-" + base64.b32encode(os.urandom(10)).decode().lower()
    ldif, users = _ldif(passwords, reader_password)
    (directory / "data.ldif").write_text(ldif)
    conf = directory / "slapd.conf"
    conf.write_text(f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload ppolicy
pidfile {directory}/slapd.pid
argsfile {directory}/slapd.args
TLSCACertificateFile {directory}/ca.pem
TLSCertificateFile {cert_file}
TLSCertificateKeyFile {key_file}
database mdb
maxsize 67108864
suffix "{BASE_DN}"
rootdn "cn=root,{BASE_DN}"
rootpw {_ssha(reader_password + "-root")}
directory {directory}/db
overlay ppolicy
access to attrs=userPassword by anonymous auth by self write by * none
access to * by users read by * none
""")
    r = subprocess.run([slapadd, "-f", str(conf), "-l", str(directory / "data.ldif")], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"slapadd failed: {r.stderr[-2000:]}")
    plain_port, tls_port = free_port(), free_port()
    proc = subprocess.Popen(
        [slapd, "-d", "0", "-f", str(conf), "-h", f"ldap://127.0.0.1:{plain_port}/ ldaps://127.0.0.1:{tls_port}/"],
        stdout=open(directory / "slapd.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_port(plain_port, proc)
        _wait_port(tls_port, proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"slapd did not start: {(directory / 'slapd.log').read_text()[-2000:]}") from None
    world = LdapWorld(
        uri=f"ldaps://127.0.0.1:{tls_port}", starttls_uri=f"ldap://127.0.0.1:{plain_port}", base_dn=BASE_DN,
        bind_dn=f"cn=netslate-reader,ou=services,{BASE_DN}", bind_password=reader_password,
        ca_file=directory / "ca.pem", ca_pem=ca_pem, passwords=passwords, users=users, directory=directory,
    )
    return world, proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ldap_world(tmp_path_factory):
    world, proc = start_ldap_world(tmp_path_factory.mktemp("slapd"))
    yield world
    stop(proc)
