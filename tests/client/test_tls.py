"""stoker.Client over TLS against a stoker.serve() started with a certificate
signed by a CA made here with openssl: the CA given is trusted, another CA, no
CA (the system's roots) and plain text against the TLS server fail quickly with
errors that name the cause (docs/security.md)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import stoker
from stoker import spark as stoker_spark

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(cwd: Path, name: str) -> Path:
    openssl(cwd, "req", "-x509", *EC, "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "2", "-subj", f"/CN=stoker {name}")  # fmt: skip
    return cwd / f"{name}.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(d, "ca"), make_ca(d, "other-ca")
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    openssl(d, "req", *EC, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", "server.pem", "-extfile", "server.ext")  # fmt: skip
    return {"dir": d, "ca": ca.read_bytes(), "other": other.read_bytes()}


@pytest.fixture(scope="module")
def server(pki):
    d = pki["dir"]
    args = ["--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key")]
    with stoker.serve(device="cpu", token="s3cret", args=args) as s:
        yield s


def fails_fast(expected: type, make) -> str:
    started = time.monotonic()
    with pytest.raises(expected) as e:
        make().health()
    assert time.monotonic() - started < 12
    return str(e.value)


def test_the_ca_given_is_trusted_as_bytes_or_text(server, pki):
    assert server.address.startswith("grpc+tls://127.0.0.1:")
    for ca in (pki["ca"], pki["ca"].decode()):
        client = stoker.Client(server.address, token="s3cret", ca_pem=ca)
        assert client.health()["status"] == "serving"


def test_misconfigurations_fail_fast_naming_the_cause(server, pki):
    address = server.address
    unavailable = stoker.ServerUnavailableError
    m = fails_fast(unavailable, lambda: stoker.Client(address, "s3cret", pki["other"]))
    assert "not trusted by the CA certificate given" in m and address in m
    m = fails_fast(unavailable, lambda: stoker.Client(address, "s3cret"))
    assert "not trusted by the operating system's root certificates" in m
    plain = address.replace("grpc+tls://", "grpc://")
    m = fails_fast(unavailable, lambda: stoker.Client(plain, "s3cret"))
    assert "speaks TLS and this client plain text" in m
    m = fails_fast(stoker.InvalidInputError, lambda: stoker.Client(address, None, b"no pem"))
    assert "not PEM" in m


def test_tls_against_a_plain_text_server_says_so(pki):
    with stoker.serve(device="cpu") as plain:
        address = plain.address.replace("grpc://", "grpc+tls://")
        m = fails_fast(
            stoker.ServerUnavailableError, lambda: stoker.Client(address, None, pki["ca"])
        )
        assert "the server speaks plain text, not TLS" in m


def test_configure_sets_the_ca_conf(tmp_path):
    from pyspark.sql import SparkSession

    def setting(ca):
        builder = stoker_spark.configure(SparkSession.Builder(), server_bin="/bin/true", ca_cert=ca)
        return builder._options["spark.stoker.server.caCert"]

    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    assert setting(pem) == pem
    assert setting(pem.encode()) == pem
    assert setting("hdfs://nn/certs/ca.pem") == "hdfs://nn/certs/ca.pem"
    assert setting(tmp_path / "ca.pem") == (tmp_path / "ca.pem").as_uri()
    plain = stoker_spark.configure(SparkSession.Builder(), server_bin="/bin/true")._options
    assert "spark.stoker.server.caCert" not in plain
