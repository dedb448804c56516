"""Bearer tokens, TLS and mutual TLS, with certificates made by openssl at
test time (as tests/server/security_test.cc makes them)."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

import plume

TOKEN = "plume-py-test-token-5d21e8"

EXTENSIONS = """[srv]
subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth
[cli]
extendedKeyUsage=clientAuth
"""

PKI_SCRIPT = r"""
set -e
mkca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout $1.key -out $1.crt -days 2 -subj /CN=$1 2>/dev/null; }
mkcert() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout $1.key -out $1.csr -subj /CN=$3 2>/dev/null
  openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -out $1.crt \
  -days 2 -extfile ext.cnf -extensions $4 2>/dev/null; }
mkca ca; mkca rogue-ca
mkcert server ca localhost srv
mkcert client ca plume-client cli
mkcert rogue-client rogue-ca rogue cli
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    (d / "ext.cnf").write_text(EXTENSIONS)
    subprocess.run(["bash", "-c", PKI_SCRIPT], cwd=d, check=True)
    assert (d / "rogue-client.crt").is_file()
    return d


def every_call(c: plume.Client, name: str) -> None:
    """Upload, list, info, gemv, stream, delete: all must succeed."""
    w = np.arange(64, dtype=np.float32).reshape(4, 16) / 8
    c.upload(name, w)
    assert name in {m.name for m in c.list()}
    assert c.info(name).shape == (4, 16)
    x = np.ones(16, np.float32)
    y = c.gemv(name, x)
    assert np.allclose(y, w @ x, rtol=2 ** -4)
    assert np.array_equal(next(iter(c.gemv_stream(name, [x]))), y)
    c.delete(name)


def test_token(start_server, tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    s = start_server(f"--auth_token_file={f}")
    with plume.Client(s.address, token=TOKEN) as c:
        every_call(c, "t1")
    with plume.Client(s.address, token_file=f) as c:  # the newline is dropped
        every_call(c, "t2")
    with plume.Client(s.address) as none, plume.Client(s.address, token=TOKEN[:-1] + "9") as wrong:
        assert none.health()  # probes need no token
        with pytest.raises(plume.Unauthenticated, match="missing `authorization: Bearer"):
            none.list()
        with pytest.raises(plume.Unauthenticated, match="invalid bearer token"):
            wrong.upload("t3", np.ones((2, 16), np.float32))
        with pytest.raises(plume.Unauthenticated):
            list(wrong.gemv_stream("t1", [np.ones(16, np.float32)]))
        with pytest.raises(plume.Unauthenticated):
            wrong.kv_list()


def test_tls(start_server, pki):
    s = start_server(f"--tls_cert={pki / 'server.crt'}", f"--tls_key={pki / 'server.key'}")
    with plume.Client(s.address, ca=pki / "ca.crt") as c:
        assert c.health()
        every_call(c, "tls1")
    with plume.Client(s.address, ca=pki / "rogue-ca.crt", timeout=5) as c:  # not the server's CA
        with pytest.raises(plume.Unavailable):
            c.list()
    with plume.Client(s.address, timeout=5) as c:  # plaintext to a TLS port
        with pytest.raises(plume.Unavailable):
            c.list()


def test_mutual_tls_with_token(start_server, pki, tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN)
    s = start_server(f"--tls_cert={pki / 'server.crt'}", f"--tls_key={pki / 'server.key'}",
                     f"--tls_client_ca={pki / 'ca.crt'}", f"--auth_token_file={f}")
    with plume.Client(s.address, ca=pki / "ca.crt", cert=pki / "client.crt", key=pki / "client.key",
                      token=TOKEN) as c:
        every_call(c, "mtls1")
    with plume.Client(s.address, ca=pki / "ca.crt", cert=pki / "client.crt", key=pki / "client.key") as c:
        with pytest.raises(plume.Unauthenticated):
            c.list()
    for cert in (None, "rogue-client"):  # no client certificate, or one the CA did not sign
        kw = {} if cert is None else {"cert": pki / f"{cert}.crt", "key": pki / f"{cert}.key"}
        with plume.Client(s.address, ca=pki / "ca.crt", token=TOKEN, timeout=5, **kw) as c:
            with pytest.raises(plume.Unavailable):
                c.list()
