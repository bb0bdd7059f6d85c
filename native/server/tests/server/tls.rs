//! TLS between the Rust client and the server: a server certificate signed
//! by a CA made here, trusted when the client is given that CA or finds it
//! among the operating system's roots; a wrong CA, plain text against a TLS
//! server and TLS against a plain-text server each fail within seconds
//! with an error that names the cause.

use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use stoker_client::{Client, ClientOptions};
use stoker_core::{Error, ErrorKind};
use stoker_server::{start, RunningServer, ServerConfig};

use crate::common::*;

/// A CA's certificate (PEM) and a server certificate it signed for
/// 127.0.0.1 and localhost, with the server's key (PEM).
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki(name: &str) -> Pki {
    pki_for(name, &["127.0.0.1", "localhost"])
}

fn pki_for(name: &str, names: &[&str]) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: leaf.pem(),
        key_pem: key.serialize_pem(),
    }
}

async fn tls_server(pki: &Pki, token: Option<&str>) -> RunningServer {
    start(ServerConfig {
        tls: Some((
            pki.cert_pem.clone().into_bytes(),
            pki.key_pem.clone().into_bytes(),
        )),
        token: token.map(String::from),
        ..config()
    })
    .await
    .unwrap()
}

/// Connects and calls `health`; the error, and how long it took to come.
async fn health(uri: &str, token: Option<&str>, ca_pem: Option<&str>) -> (Result<()>, Duration) {
    let options = ClientOptions {
        token: token.map(String::from),
        ca_pem: ca_pem.map(|p| p.as_bytes().to_vec()),
        ..Default::default()
    };
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        let mut client = Client::connect(uri, options).await?;
        client.health().await.map(|_| ())
    })
    .await
    .expect("the client gave up within 30 s");
    (result, started.elapsed())
}

type Result<T> = std::result::Result<T, Error>;

/// The error of a call that must fail fast.
fn fails_fast(outcome: (Result<()>, Duration)) -> Error {
    let (result, took) = outcome;
    let e = result.expect_err("the call should fail");
    assert!(took < Duration::from_secs(12), "took {took:?}: {e}");
    eprintln!("failed in {took:?}: {e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_servers_ca_is_trusted_and_others_are_not() {
    let good = pki("good");
    let server = tls_server(&good, Some("s3cret")).await;
    let uri = server.uri();
    assert!(uri.starts_with("grpc+tls://127.0.0.1:"), "{uri}");
    let (ok, _) = health(&uri, Some("s3cret"), Some(&good.ca_pem)).await;
    ok.unwrap();
    // localhost is in the certificate too.
    let by_name = uri.replace("127.0.0.1", "localhost");
    health(&by_name, Some("s3cret"), Some(&good.ca_pem))
        .await
        .0
        .unwrap();

    // The token is still checked over TLS.
    let e = health(&uri, Some("wrong"), Some(&good.ca_pem)).await.0;
    assert_eq!(e.unwrap_err().kind(), ErrorKind::Unauthenticated);

    // A CA that did not sign the server's certificate: only it is trusted.
    let other = pki("other");
    let e = fails_fast(health(&uri, Some("s3cret"), Some(&other.ca_pem)).await);
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.message().contains("TLS handshake"), "{e}");
    assert!(e.message().contains(&uri), "{e}");
    assert!(
        e.message()
            .contains("not trusted by the CA certificate given"),
        "{e}"
    );

    // No CA: the operating system's roots, which do not hold this one.
    let e = fails_fast(health(&uri, Some("s3cret"), None).await);
    assert!(
        e.message()
            .contains("not trusted by the operating system's root certificates"),
        "{e}"
    );

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_for_another_name_is_refused() {
    let elsewhere = pki_for("elsewhere", &["stoker.example"]);
    let server = tls_server(&elsewhere, None).await;
    let e = fails_fast(health(&server.uri(), None, Some(&elsewhere.ca_pem)).await);
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.message().contains("not issued for the host"), "{e}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ca_that_is_not_pem_is_invalid_input() {
    let good = pki("good");
    let server = tls_server(&good, None).await;
    let e = health(&server.uri(), None, Some("not a certificate"))
        .await
        .0;
    let e = e.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.message().contains("PEM"), "{e}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_text_against_a_tls_server_says_so() {
    let good = pki("good");
    let server = tls_server(&good, None).await;
    let plain = server.uri().replace("grpc+tls://", "grpc://");
    let e = fails_fast(health(&plain, None, None).await);
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.message().contains("speaks TLS"), "{e}");
    assert!(e.message().contains("grpc+tls://"), "{e}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_against_a_plain_text_server_says_so() {
    let good = pki("good");
    let server = start(config()).await.unwrap();
    let tls = server.uri().replace("grpc://", "grpc+tls://");
    let e = fails_fast(health(&tls, None, Some(&good.ca_pem)).await);
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.message().contains("speaks plain text"), "{e}");
    let e = fails_fast(health(&tls, None, None).await);
    assert!(e.message().contains("speaks plain text"), "{e}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_listening_is_unavailable_quickly() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    for uri in [
        format!("grpc://127.0.0.1:{port}"),
        format!("grpc+tls://127.0.0.1:{port}"),
    ] {
        let e = fails_fast(health(&uri, None, None).await);
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(e.message().contains("cannot reach"), "{e}");
    }
}

/// Run by [`the_systems_roots_are_used_without_a_ca`] in a child process
/// whose system roots are the test CA; does nothing on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_connects_without_a_ca() {
    let Ok(uri) = std::env::var("STOKER_TEST_TLS_URI") else {
        return;
    };
    health(&uri, None, None).await.0.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_systems_roots_are_used_without_a_ca() {
    let good = pki("good");
    let server = tls_server(&good, None).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &good.ca_pem).unwrap();
    // rustls-native-certs reads SSL_CERT_FILE instead of the system store;
    // set in a child so this process's environment stays as it is.
    let uri = server.uri();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tls::child_connects_without_a_ca", "--nocapture"])
            .env("SSL_CERT_FILE", &ca)
            .env("STOKER_TEST_TLS_URI", uri)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
    server.stop().await.unwrap();
}
