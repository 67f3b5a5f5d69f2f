import typer

from netslate.cli.common import console, emit, state

app = typer.Typer(help="Signing keys (the root, site keys and their revocation) and the key that seals secrets at rest.", no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context, json_: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Print the signing key's fingerprint and public key."""
    data = state(ctx).services.keys.list().keys[0]
    emit(data, json_, lambda d: console.print(f"{d['fingerprint']}\n[dim]ed25519 public key:[/dim] {d['public_key']}"))


@app.command("rewrap")
def rewrap(ctx: typer.Context, json_: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Rotate the key-encryption key: a new key, every stored secret re-wrapped, the old key deleted (admin)."""
    data = state(ctx).services.keys.rewrap()
    emit(data, json_, lambda d: console.print(
        f"key {d['key_id']} is current: {d['rewrapped']} sealed values re-wrapped"
        + (f"; retired {', '.join(d['retired'])}" if d["retired"] else "")))


@app.command("list")
def list_(ctx: typer.Context, json_: bool = typer.Option(False, "--json", help="Print JSON.")):
    """The root (the key machines pin), this server's signer, site certificates and revocations."""
    data = state(ctx).services.keys.list()

    def render(d):
        root = d["keys"][0]
        console.print(f"root      {root['fingerprint']}" + ("" if d["root_private_here"] else "  [dim](private half not here)[/dim]"), soft_wrap=True)
        s = d["signer"]
        console.print(f"signer    {s['fingerprint']}  " + ("root" if s["site"] is None else f"site {s['site']} (serial {s['serial']})"), soft_wrap=True)
        for c in d["site_certs"]:
            console.print(f"site cert {c['serial']:>4}  {c['site']:<16} {c['key']}  until {c['not_after']}" + ("  [red]revoked[/red]" if c["revoked"] else ""), soft_wrap=True)
        r = d["revocations"]
        console.print(f"revocations list {r['number']} ({r['issued_at']}): serials {', '.join(str(x['serial']) for x in r['revoked']) or '-'}"
                      if r else "revocations none", soft_wrap=True)

    emit(data, json_, render)


@app.command("site-cert")
def site_cert(
    ctx: typer.Context,
    site: str = typer.Argument(..., help="The site the key signs for ('*': every site, for a central server when the root is offline)."),
    days: int = typer.Option(365, "--days", help="Validity in days."),
    public_key: str = typer.Option(None, "--public-key", help="Certify this base64 Ed25519 key (made at the branch) instead of making one."),
    out: str = typer.Option(None, "--out", help="Write site.key (0600), site.cert.json and root.pub into this directory (copy them to the branch's keys/)."),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Certify a signing key for SITE with the root key (admin; run where the root is)."""
    from pathlib import Path  # lazy: CLI start-up

    from netslate.crypto.keys import write_site_files
    from netslate.errors import UserError
    from netslate.services.keys import SiteCertRequest, sitecert_public

    if public_key is None and out is None:
        raise UserError("give --out DIR (the new site key is written there) or --public-key B64")
    if public_key is not None:
        try:
            sitecert_public(public_key)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    svc = state(ctx).services.keys
    issued = svc.site_cert(SiteCertRequest(site=site, days=days, public_key=public_key))
    written = []
    if out is not None:
        import base64

        root = base64.b64decode(svc.list().keys[0].public_key)
        pem = issued.site_key_pem.encode() if issued.site_key_pem else None
        written = write_site_files(Path(out), issued.cert.certificate, pem, root)
    data = {**issued.cert.model_dump(), "written": written}
    emit(data, json_, lambda d: console.print(
        f"site certificate {d['serial']} for site {d['site']}: key {d['key']}, valid until {d['not_after']}"
        + (f"\nwrote {', '.join(d['written'])}" if d["written"] else ""), soft_wrap=True))


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="A site (all its certificates) or a certificate serial."),
    out: str = typer.Option(None, "--out", help="Also write the signed statement to this file (for `key import` where the root is not)."),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Revoke site keys: a new root-signed, numbered revocation statement (admin; run where the root is)."""
    from netslate.services.keys import RevokeRequest  # lazy: CLI start-up

    data = state(ctx).services.keys.revoke(RevokeRequest(target=target))
    if out is not None:
        import json
        from pathlib import Path

        from netslate.fsutil import atomic_write

        atomic_write(Path(out), json.dumps(data.statement, indent=1, sort_keys=True).encode() + b"\n", mode=0o644)
    emit(data, json_, lambda d: console.print(
        f"revocation list {d['number']}: serials {', '.join(str(r['serial']) for r in d['revoked'])} revoked"
        + (f"\nwrote {out}" if out else ""), soft_wrap=True))


@app.command("import")
def import_(
    ctx: typer.Context,
    path: str = typer.Argument(..., help="A site.cert.json or a revocation statement written by `key revoke --out`."),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Record a root-signed site certificate or revocation statement made where the root is kept offline (admin)."""
    import json  # lazy: CLI start-up

    from netslate.errors import UserError
    from netslate.services.keys import ImportRequest

    try:
        doc = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: not a signed document")
    data = state(ctx).services.keys.import_document(ImportRequest(document=doc))
    emit(data, json_, lambda d: console.print(
        f"recorded site certificate {d['serial']}" if d["serial"] is not None else f"revocation list {d['number']} is current", soft_wrap=True))
