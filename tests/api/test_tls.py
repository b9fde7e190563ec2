"""TLS (issue 17, docs/operations.md section 4), with certificates made for the test by trustme: the Python client,
the CLI and the watch work over https:// against the CA they are given (--ca-file, TENURE_CA_FILE); an untrusted
CA, an expired certificate and a wrong host name are each refused, saying which; the host agent follows a server
over TLS; and `tenure serve` re-reads its certificate on SIGHUP without dropping an open connection."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from typer.testing import CliRunner

from tenure.cli.main import app as cli
from tenure.client import TenureClient, TenureTLSError
from tests.agent_support import start_host_agent, state_is, wait_for
from tests.conftest import Api, start_api

TENURE = Path(sys.executable).parent / "tenure"


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _served(tmp_path: Path, cert: trustme.LeafCert, ca: trustme.CA, **config: Any) -> Iterator[Api]:
    verify = ssl.create_default_context()
    ca.configure_trust(verify)
    config.setdefault("bookmark_interval", 0.2)
    yield from start_api(f"sqlite:///{tmp_path / 'tls.db'}", tmp_path / "data", tls=server_context(cert),
                         verify=verify, **config)


@pytest.fixture
def served(tmp_path: Path, ca: trustme.CA) -> Iterator[Api]:
    yield from _served(tmp_path, ca.issue_cert("127.0.0.1", "localhost"), ca)


def test_the_client_the_cli_and_the_watch_work_over_tls(served: Api, ca_file: str) -> None:
    url = str(served.client.base_url)
    assert url.startswith("https://")
    with TenureClient(url, served.admin_token, ca_file=ca_file) as c:
        c.create_pool("p", ranges=[[1, 10]])
        w = c.watch("claim", initial=True)
        assert next(iter(w)).initial_end
        c.claim("p", "a")
        ev = next(e for e in w if not e.is_bookmark)
        assert ev.id == "p/a"
        w.close()
    out = CliRunner().invoke(cli, ["--url", url, "--token", served.admin_token, "--ca-file", ca_file, "claims", "p",
                                   "--json"])
    assert out.exit_code == 0 and '"a"' in out.stdout, out.output
    env = CliRunner().invoke(cli, ["--url", url, "--token", served.admin_token, "pool", "list"],
                             env={"TENURE_CA_FILE": ca_file})
    assert env.exit_code == 0 and "p" in env.stdout, env.output


def test_a_server_signed_by_another_ca_is_refused_saying_so(served: Api, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    url = str(served.client.base_url)
    with TenureClient(url, served.admin_token, ca_file=str(other)) as c, pytest.raises(TenureTLSError) as caught:
        c.whoami()
    assert "not signed by a CA this client trusts" in caught.value.message
    out = CliRunner().invoke(cli, ["--url", url, "--token", served.admin_token, "--ca-file", str(other), "pool",
                                   "list"])
    assert out.exit_code == 1 and "tls_refused" in out.output and "not signed by a CA" in out.output, out.output
    with TenureClient(url, served.admin_token) as c, pytest.raises(TenureTLSError):  # the system's trust: no
        c.whoami()


def test_an_expired_certificate_is_refused_saying_so(tmp_path: Path, ca: trustme.CA, ca_file: str) -> None:
    past = datetime.now(UTC) - timedelta(days=2)
    cert = ca.issue_cert("127.0.0.1", not_before=past - timedelta(days=30), not_after=past)
    for api in _served(tmp_path, cert, ca, wait_ready=True):
        with TenureClient(str(api.client.base_url), "x", ca_file=ca_file) as c, \
                pytest.raises(TenureTLSError, match="has expired"):
            c.whoami()


def test_a_certificate_for_another_host_name_is_refused_saying_so(tmp_path: Path, ca: trustme.CA,
                                                                   ca_file: str) -> None:
    for api in _served(tmp_path, ca.issue_cert("tenure.example.org"), ca, wait_ready=True):
        with TenureClient(str(api.client.base_url), "x", ca_file=ca_file) as c, \
                pytest.raises(TenureTLSError, match="not for this host name"):
            c.whoami()


def test_the_host_agent_follows_a_server_over_tls(tmp_path: Path, ca: trustme.CA, ca_file: str) -> None:
    from tenure.services.runtime import Settings

    for server in _served(tmp_path, ca.issue_cert("127.0.0.1"), ca, settings=Settings()):
        for _agent in start_host_agent(tmp_path, server, "h1", ca_file=ca_file):
            r = server.post("/v1/instances", json={"name": "m", "type": "memory", "host": "h1"})
            assert r.status_code == 201, r.text
            with TenureClient(str(server.client.base_url), server.admin_token, ca_file=ca_file) as c:
                assert c.agent("h1")["state"] == "up"
            wait_for_tls(server, r.json()["id"], ca_file)


def wait_for_tls(server: Api, iid: str, ca_file: str) -> None:
    old = os.environ.get("TENURE_CA_FILE")
    os.environ["TENURE_CA_FILE"] = ca_file  # wait_for's own client trusts the CA too
    try:
        wait_for(server, iid, state_is("active"))
    finally:
        if old is None:
            os.environ.pop("TENURE_CA_FILE", None)
        else:
            os.environ["TENURE_CA_FILE"] = old


def _peer_cert(port: int, ca_file: str) -> bytes:
    ctx = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.getpeercert(binary_form=True)


def test_sighup_reloads_the_certificate_and_keeps_open_connections(tmp_path: Path, ca: trustme.CA,
                                                                   ca_file: str) -> None:
    import httpx

    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = ca.issue_cert("127.0.0.1")
    first.cert_chain_pems[0].write_to_path(str(cert_path))
    first.private_key_pem.write_to_path(str(key_path))
    data = tmp_path / "data"
    proc = subprocess.Popen([str(TENURE), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data),
                             "--tls-cert", str(cert_path), "--tls-key", str(key_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    logged: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [logged.put(line) for line in proc.stderr or ()], daemon=True).start()

    def said(text: str) -> None:  # the server's log says it (else queue.Empty within 30 s)
        while text not in logged.get(timeout=30):
            pass

    try:
        deadline = time.monotonic() + 60
        while not (data / "server.json").exists() or not (data / "admin.token").exists():
            assert proc.poll() is None, "tenure serve exited"
            assert time.monotonic() < deadline, "tenure serve did not start"
            time.sleep(0.05)
        url = json.loads((data / "server.json").read_text())["url"]
        assert url.startswith("https://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        token = (data / "admin.token").read_text().strip()
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=ca_file), timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as open_conn:
            first_answer = open_conn.get("/v1/whoami")  # a keep-alive connection, made with the first certificate
            assert first_answer.status_code == 200
            local = first_answer.extensions["network_stream"].get_extra_info("client_addr")
            before = _peer_cert(port, ca_file)
            second = ca.issue_cert("127.0.0.1", "localhost")
            second.cert_chain_pems[0].write_to_path(str(cert_path))
            second.private_key_pem.write_to_path(str(key_path))
            proc.send_signal(signal.SIGHUP)
            said("TLS certificate reloaded")
            deadline = time.monotonic() + 30
            while (after := _peer_cert(port, ca_file)) == before:  # new handshakes: the new certificate
                assert time.monotonic() < deadline, "the certificate was not reloaded"
                time.sleep(0.05)
            assert after == ssl.PEM_cert_to_DER_cert(second.cert_chain_pems[0].bytes().decode())
            again = open_conn.get("/v1/whoami")  # the open connection goes on: the same one, not a new one
            assert again.status_code == 200
            assert again.extensions["network_stream"].get_extra_info("client_addr") == local
            # A broken pair on the next SIGHUP: the server keeps the one it has, and keeps serving.
            key_path.write_text("not a key\n")
            proc.send_signal(signal.SIGHUP)
            said("TLS certificate not reloaded")
            assert _peer_cert(port, ca_file) == after
            assert open_conn.get("/healthz").status_code == 200
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ------------------------------------------------------------ client certificates for agents (--tls-client-ca)

def _pair(leaf: trustme.LeafCert, where: Path, name: str) -> tuple[str, str]:
    cert, key = where / f"{name}.pem", where / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


@pytest.fixture
def clients_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def with_client_ca(tmp_path: Path, ca: trustme.CA, clients_ca: trustme.CA) -> Iterator[Api]:
    """A server that asks clients for a certificate signed by ``clients_ca`` (tenure serve --tls-client-ca)."""
    from tenure.api.tls import ServerTLS
    from tenure.services.runtime import Settings

    cert, key = _pair(ca.issue_cert("127.0.0.1"), tmp_path, "server")
    client_ca = tmp_path / "clients-ca.pem"
    clients_ca.cert_pem.write_to_path(str(client_ca))
    verify = ssl.create_default_context()
    ca.configure_trust(verify)
    tls = ServerTLS(Path(cert), Path(key), client_ca=client_ca)
    yield from start_api(f"sqlite:///{tmp_path / 'tls.db'}", tmp_path / "data", tls=tls.context, verify=verify,
                         agent_certs=True, bookmark_interval=0.2, settings=Settings())


def test_an_agent_token_is_accepted_only_with_a_certificate_naming_its_host(with_client_ca: Api, ca_file: str,
                                                                            clients_ca: trustme.CA,
                                                                            tmp_path: Path) -> None:
    from tenure.client import ClientCert, TenureAPIError

    url = str(with_client_ca.client.base_url)
    token = with_client_ca.token("agent", host="h1")
    right = ClientCert(*_pair(clients_ca.issue_cert("h1"), tmp_path, "h1"))
    wrong = ClientCert(*_pair(clients_ca.issue_cert("h2"), tmp_path, "h2"))
    with TenureClient(url, token, ca_file=ca_file) as c:
        with pytest.raises(TenureAPIError) as none:
            c.register_agent("h1", kinds=["instance"], version="test")
        assert none.value.status == 403 and none.value.code == "client_cert_required", none.value
        with pytest.raises(TenureAPIError) as watch:  # the watch too
            next(iter(c.watch("instance", initial=True)))
        assert watch.value.code == "client_cert_required"
    with TenureClient(url, token, ca_file=ca_file, client_cert=wrong) as c, pytest.raises(TenureAPIError) as other:
        c.register_agent("h1", kinds=["instance"], version="test")
    assert other.value.code == "client_cert_mismatch" and "'h1'" in other.value.message and "h2" in other.value.message
    with TenureClient(url, token, ca_file=ca_file, client_cert=right) as c:
        c.register_agent("h1", kinds=["instance"], version="test")
        w = c.watch("instance", initial=True)
        assert next(iter(w)).initial_end
        w.close()
    with TenureClient(url, with_client_ca.admin_token, ca_file=ca_file) as c:  # users need no certificate
        assert c.agent("h1")["state"] == "up"


def test_a_client_certificate_the_ca_did_not_sign_is_refused_in_the_handshake(with_client_ca: Api, ca_file: str,
                                                                               tmp_path: Path) -> None:
    import httpx

    from tenure.client import ClientCert, TenureClientError

    stranger = ClientCert(*_pair(trustme.CA().issue_cert("h1"), tmp_path, "stranger"))
    token = with_client_ca.token("agent", host="h1")
    with TenureClient(str(with_client_ca.client.base_url), token, ca_file=ca_file, client_cert=stranger) as c, \
            pytest.raises((httpx.HTTPError, TenureClientError)):
        c.register_agent("h1", kinds=["instance"], version="test")


def test_the_host_agent_shows_its_certificate_and_follows_the_server(with_client_ca: Api, ca_file: str,
                                                                     clients_ca: trustme.CA, tmp_path: Path) -> None:
    pair = _pair(clients_ca.issue_cert("h1"), tmp_path, "h1")
    for _agent in start_host_agent(tmp_path, with_client_ca, "h1", ca_file=ca_file, client_cert=pair):
        r = with_client_ca.post("/v1/instances", json={"name": "m", "type": "memory", "host": "h1"})
        assert r.status_code == 201, r.text
        wait_for_tls(with_client_ca, r.json()["id"], ca_file)


def test_client_ca_and_client_cert_options_are_checked_before_anything_runs(tmp_path: Path, ca: trustme.CA) -> None:
    runner = CliRunner()
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    alone = runner.invoke(cli, ["serve", "--data-dir", str(tmp_path / "d"), "--tls-client-ca", str(ca_pem)])
    assert alone.exit_code == 2 and "only with --tls-cert" in alone.output, alone.output
    cert, key = _pair(ca.issue_cert("127.0.0.1"), tmp_path, "server")
    replica = runner.invoke(cli, ["serve", "--data-dir", str(tmp_path / "d"), "--db", "postgresql://x/y",
                                  "--replica-name", "a", "--tls-cert", cert, "--tls-key", key,
                                  "--tls-client-ca", str(ca_pem)])
    assert replica.exit_code == 2 and "not yet with --replica-name" in replica.output, replica.output
    half = runner.invoke(cli, ["agent", "--data-dir", str(tmp_path / "a"), "--host", "h1", "--server",
                               "https://127.0.0.1:1", "--client-cert", cert], env={"TENURE_SERVER_TOKEN": "x"})
    assert half.exit_code == 2 and "--client-key" in half.output, half.output
    mismatched = runner.invoke(cli, ["agent", "--data-dir", str(tmp_path / "a"), "--host", "h1", "--server",
                                     "https://127.0.0.1:1", "--client-cert", cert, "--client-key", str(ca_pem)],
                               env={"TENURE_SERVER_TOKEN": "x", "COLUMNS": "400"})
    assert mismatched.exit_code == 2 and "cannot be used together" in mismatched.output, mismatched.output


def test_a_renewed_client_certificate_is_loaded_again_and_a_broken_one_is_not(tmp_path: Path,
                                                                               clients_ca: trustme.CA) -> None:
    from tenure.client import ClientCert, TenureConfigError

    cert, key = _pair(clients_ca.issue_cert("h1"), tmp_path, "h1")
    pair = ClientCert(cert, key)
    context = ssl.create_default_context()
    assert pair.load_into(context) and not pair.load_into(context)  # loaded once; unchanged files: not again
    _pair(clients_ca.issue_cert("h1"), tmp_path, "h1")  # renewed in place
    assert pair.load_into(context)
    Path(key).write_text("half a key")
    with pytest.raises(TenureConfigError, match="cannot be used together"):
        pair.load_into(context)


def test_a_half_written_renewal_leaves_the_agent_showing_its_old_certificate(with_client_ca: Api, ca_file: str,
                                                                              clients_ca: trustme.CA,
                                                                              tmp_path: Path) -> None:
    import httpx

    from tenure.client import ClientCert, TenureConfigError

    cert, key = _pair(clients_ca.issue_cert("h1"), tmp_path, "h1")
    pair = ClientCert(cert, key)
    token = with_client_ca.token("agent", host="h1")
    with TenureClient(str(with_client_ca.client.base_url), token, ca_file=ca_file, client_cert=pair) as c:
        renewed, _ = _pair(clients_ca.issue_cert("h1"), tmp_path, "renewed")
        Path(cert).write_bytes(Path(renewed).read_bytes())  # the new certificate is there, its key not yet
        with pytest.raises(TenureConfigError, match="cannot be used together"):
            c.reload_client_cert()
        # A new connection with the same context still shows the old, whole pair.
        with httpx.Client(base_url=str(with_client_ca.client.base_url), verify=c.tls, timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as fresh:
            r = fresh.post("/v1/agents", json={"host": "h1", "kinds": ["instance"], "version": "test"})
            assert r.status_code in (200, 201), r.text


def test_a_pair_that_does_not_match_is_refused_naming_both_files(tmp_path: Path, ca: trustme.CA) -> None:
    """(An ssl.SSLError is an OSError: it was once reported as a file that could not be read.)"""
    from tenure.api.tls import ServerTLS, TLSConfigError

    cert, _ = _pair(ca.issue_cert("127.0.0.1"), tmp_path, "one")
    _, key = _pair(ca.issue_cert("127.0.0.1"), tmp_path, "two")
    with pytest.raises(TLSConfigError, match="cannot be used together") as caught:
        ServerTLS(Path(cert), Path(key))
    assert cert in str(caught.value) and key in str(caught.value)
    with pytest.raises(TLSConfigError, match="cannot read"):
        ServerTLS(Path(cert), tmp_path / "missing.key")
    with pytest.raises(TLSConfigError, match="holds no CA certificate"):
        ServerTLS(*map(Path, _pair(ca.issue_cert("127.0.0.1"), tmp_path, "three")), client_ca=Path(key))
