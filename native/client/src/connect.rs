//! How the client reaches a server, and why it could not, in one place.
//!
//! `grpc://` is plain-text HTTP/2; `grpc+tls://` is TLS, trusting exactly
//! the CA certificate the caller gives (PEM) or, without one, the operating
//! system's root certificates (Mozilla's, from webpki-roots, where the
//! system has none). Connecting is bounded (TCP connect and TLS handshake
//! each [`CONNECT_TIMEOUT`]), and the failures a misconfiguration causes
//! are turned into errors that name it: a certificate the CA did not sign,
//! a certificate for another name, TLS against a plain-text server, and
//! plain text against a TLS server (found by [`explain_plain_text`] when
//! the first call on a plain-text connection fails).

use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use stoker_core::{Error, ErrorKind, Result};
use stoker_wire::status::chain;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// How long a TCP connect, and then a TLS handshake, may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a client connects, as its errors name it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address as given (`grpc+tls://host:port`).
    pub uri: String,
    /// `host:port`.
    pub authority: String,
    pub tls: bool,
    /// Whether the caller gave the CA to trust (else the system's roots).
    pub ca_given: bool,
}

impl Target {
    pub fn parse(uri: &str, ca_given: bool) -> Result<Target> {
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
            Error::invalid(format!(
                "server address '{uri}' must look like grpc://host:port"
            ))
        })?;
        let tls = match scheme {
            "grpc" | "grpc+tcp" | "http" => false,
            "grpc+tls" | "https" => true,
            other => {
                return Err(Error::invalid(format!(
                    "unknown scheme '{other}' in '{uri}'"
                )))
            }
        };
        Ok(Target {
            uri: uri.to_string(),
            authority: rest.trim_end_matches('/').to_string(),
            tls,
            ca_given,
        })
    }

    /// The URL tonic connects to.
    pub fn http(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.authority
        )
    }

    fn trusted_by(&self) -> &'static str {
        if self.ca_given {
            "the CA certificate given to the client (Spark: spark.stoker.server.caCert; \
             Python: ca_pem)"
        } else {
            "the operating system's root certificates (no CA certificate was given: set \
             spark.stoker.server.caCert in Spark, ca_pem in Python)"
        }
    }
}

/// `endpoint` with TLS for `target`: trusting exactly `ca_pem` when given,
/// else the system's roots.
pub fn with_tls(endpoint: Endpoint, target: &Target, ca_pem: Option<&[u8]>) -> Result<Endpoint> {
    let base = ClientTlsConfig::new().timeout(CONNECT_TIMEOUT);
    let bad = |e: tonic::transport::Error| {
        Error::invalid(format!("TLS settings for {}: {}", target.uri, chain(&e)))
    };
    match ca_pem {
        Some(pem) => {
            check_pem(pem)?;
            endpoint
                .tls_config(base.ca_certificate(Certificate::from_pem(pem)))
                .map_err(bad)
        }
        // A system with no root store (a minimal container) gets Mozilla's.
        None => match endpoint
            .clone()
            .tls_config(base.clone().with_native_roots())
        {
            Ok(e) => Ok(e),
            Err(_) => endpoint.tls_config(base.with_webpki_roots()).map_err(bad),
        },
    }
}

/// A CA certificate must be PEM holding at least one certificate.
fn check_pem(pem: &[u8]) -> Result<()> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::invalid(format!("the CA certificate is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::invalid(
            "the CA certificate is not PEM: it holds no -----BEGIN CERTIFICATE----- block",
        ));
    }
    Ok(())
}

/// What went wrong, read from an error's sources.
enum Cause {
    Refused,
    Certificate(rustls::CertificateError),
    /// The peer's first bytes were not TLS, or it closed during the handshake.
    NotTls,
    HandshakeTimeout,
    NoHttp2,
    Other,
}

fn cause(e: &(dyn std::error::Error + 'static)) -> Cause {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return match r {
                rustls::Error::InvalidCertificate(c) => Cause::Certificate(c.clone()),
                rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                    Cause::NotTls
                }
                _ => Cause::Other,
            };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return Cause::Refused,
                // rustls: the peer closed before the handshake finished.
                std::io::ErrorKind::UnexpectedEof => return Cause::NotTls,
                _ => {}
            }
            if let Some(inner) = io.get_ref() {
                next = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        // tonic's own TLS errors are private: known by their text.
        match e.to_string().as_str() {
            "TLS handshake timeout." => return Cause::HandshakeTimeout,
            "HTTP/2 was not negotiated." => return Cause::NoHttp2,
            _ => {}
        }
        next = e.source();
    }
    Cause::Other
}

/// The error for a connection that could not be made.
pub fn connect_error(target: &Target, e: &tonic::transport::Error) -> Error {
    let uri = &target.uri;
    let detail = chain(e);
    let unavailable = |m: String| Error::new(ErrorKind::Unavailable, m);
    if !target.tls {
        return unavailable(format!("cannot reach the stoker server at {uri}: {detail}"));
    }
    let handshake = format!("TLS handshake with {uri} failed");
    match cause(e) {
        Cause::Refused => unavailable(format!("cannot reach the stoker server at {uri}: {detail}")),
        Cause::Certificate(c) => {
            use rustls::CertificateError as C;
            let why = match c {
                C::UnknownIssuer | C::BadSignature | C::UnknownRevocationStatus => format!(
                    "the server's certificate is not trusted by {}",
                    target.trusted_by()
                ),
                C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                    "the server's certificate is not issued for the host in {uri} (its \
                     subject alternative names must include that name or IP address)"
                ),
                C::Expired | C::ExpiredContext { .. } => {
                    "the server's certificate has expired".to_string()
                }
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    "the server's certificate is not valid yet".to_string()
                }
                _ => "the server's certificate was refused".to_string(),
            };
            unavailable(format!("{handshake}: {why} ({detail})"))
        }
        Cause::NotTls => unavailable(format!(
            "{handshake}: the server speaks plain text, not TLS (connect to it with \
             grpc://{}, or start it with --tls-cert and --tls-key) ({detail})",
            target.authority
        )),
        Cause::HandshakeTimeout => unavailable(format!(
            "{handshake}: no answer within {} s ({detail})",
            CONNECT_TIMEOUT.as_secs()
        )),
        Cause::NoHttp2 => unavailable(format!(
            "{handshake}: the server did not offer HTTP/2 (ALPN h2): is it a stoker server?"
        )),
        Cause::Other => unavailable(format!("cannot reach the stoker server at {uri}: {detail}")),
    }
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A call on a plain-text connection failed before any answer: if the
/// server is a TLS server, an error that says so, else `None`. Found by
/// opening one more connection and reading the server's first bytes to an
/// HTTP/2 preface: a TLS record (an alert, 0x15 0x03) is TLS; a TLS server
/// may also just close.
pub async fn explain_plain_text(target: &Target) -> Option<Error> {
    if target.tls {
        return None;
    }
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(&target.authority)
            .await
            .ok()?;
        s.write_all(H2_PREFACE).await.ok()?;
        let mut first = [0u8; 2];
        let n = s.read(&mut first).await.ok()?;
        Some(n == 0 || (first[0] == 0x15 && n > 1 && first[1] == 0x03))
    };
    let tls = tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .ok()
        .flatten()?;
    tls.then(|| {
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "the stoker server at {} speaks TLS and this client plain text: connect \
                 with grpc+tls://{} (and the CA that signed its certificate: \
                 spark.stoker.server.caCert in Spark, ca_pem in Python)",
                target.uri, target.authority
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let t = Target::parse("grpc+tls://h:1", false).unwrap();
        assert!(t.tls);
        assert_eq!(t.http(), "https://h:1");
        assert!(!Target::parse("grpc://h:1", false).unwrap().tls);
        assert!(Target::parse("h:1", false).is_err());
        assert!(Target::parse("ftp://h:1", false).is_err());
    }

    #[test]
    fn a_ca_must_be_pem() {
        let e = check_pem(b"hello").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("BEGIN CERTIFICATE"), "{e}");
    }

    #[test]
    fn io_errors_show_their_inner_error() {
        let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        assert!(chain(&io).contains("UnknownIssuer"), "{}", chain(&io));
        assert!(matches!(
            cause(&io),
            Cause::Certificate(rustls::CertificateError::UnknownIssuer)
        ));
    }
}
