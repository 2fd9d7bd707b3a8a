"""HTTPS served by the app itself (``NETADAPT_TLS_CERT`` / ``NETADAPT_TLS_KEY``), as the README's
"Phones over HTTPS" guide runs it on a LAN: the real uvicorn command of ``make run`` with a
certificate made here, a client that trusts only that certificate, and the pages a phone's owner
uses (log in, add a phone: its QR code must carry an ``https://`` address)."""
from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e_support import PRODUCTION, HttpClient, wait_until
from tests.test_e2e import PASSWORD, create_user
from tests.test_settings import load_settings

REPO = Path(__file__).resolve().parents[1]


def write_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (what the guide's openssl line makes for a LAN
    address) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "server.crt", folder / "server.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class HttpsClient(HttpClient):
    """The e2e client over HTTPS, trusting only ``cafile``; it sends ``Origin`` as browsers do
    (Django checks it, or the Referer, on every HTTPS form post)."""

    def __init__(self, base_url: str, cafile: Path) -> None:
        super().__init__(base_url)
        context = ssl.create_default_context(cafile=str(cafile))
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                                  urllib.request.HTTPCookieProcessor(self.cookies))

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        return super().request(method, path, body, {"Origin": self.base_url, **(headers or {})})


def test_the_certificate_and_key_go_together(tmp_path):
    result = load_settings(tmp_path, NETADAPT_TLS_CERT=str(tmp_path / "server.crt"))
    assert result.returncode != 0
    assert "NETADAPT_TLS_CERT and NETADAPT_TLS_KEY go together" in result.stderr


def test_make_run_refuses_a_certificate_it_cannot_load_before_starting_anything(tmp_path):
    cert_file, _ = write_certificate(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    env.update(NETADAPT_DATA_DIR=str(tmp_path / "data"), NETADAPT_TLS_CERT=str(cert_file),
               NETADAPT_TLS_KEY=str(tmp_path / "missing.key"))
    result = subprocess.run([sys.executable, "-m", "webapp.serve", "--port", "9"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot serve HTTPS" in result.stderr and "missing.key" in result.stderr
    assert not (tmp_path / "data" / "db.sqlite3").exists()  # stopped before migrating


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.skipif(PRODUCTION, reason="the TLS wiring is the same in both modes; run once")
def test_a_phone_owner_works_over_https_and_the_qr_code_carries_https(live_app, tmp_path, settings):
    cert_file, key_file = write_certificate(tmp_path)
    # The launcher reads the pair from its settings (make run's environment); the server from its own.
    settings.TLS_CERT_FILE, settings.TLS_KEY_FILE = str(cert_file), str(key_file)
    app = live_app
    app.web.stop()
    app.processes.remove(app.web)
    app.env = {**app.env, "NETADAPT_TLS_CERT": str(cert_file), "NETADAPT_TLS_KEY": str(key_file)}
    base = f"https://127.0.0.1:{app.port}"
    client = HttpsClient(base, cert_file)

    def answers() -> bool:
        try:
            return client.get("/accounts/login/").status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    from webapp.serve import uvicorn_command

    app.web = app._start("web", uvicorn_command("127.0.0.1", app.port, "--log-level", "info"))
    wait_until(answers, "the HTTPS server to answer", app, 120)
    with pytest.raises(OSError):  # it speaks TLS only
        urllib.request.urlopen(f"http://127.0.0.1:{app.port}/accounts/login/", timeout=30).read()

    create_user("tls-owner")
    client.log_in("tls-owner", PASSWORD)
    session = next(cookie for cookie in client.cookies if cookie.name == "sessionid")
    assert session.secure  # a server that speaks only HTTPS marks its cookies secure
    page = client.get("/devices/add-phone/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.body.decode()).group(1)
    added = client.post_form("/devices/add-phone/", {"name": "lan phone", "csrfmiddlewaretoken": token})
    assert added.status == 200, added.body[:500]
    shown = re.search(r'id="pairing-url"[^>]*>\s*([^<\s]+)', added.body.decode()).group(1)
    assert shown.startswith(f"{base}/devices/phone/#pair="), shown
