//! TLS between nodes: the server configuration of the LAN listener, the client configuration a
//! node uses to call one peer, and the two verifiers that make both sides mutually
//! authenticated without any certificate authority.
//!
//! Every node presents its own self-signed certificate (`identity.rs`), as server and as
//! client. A caller pins the callee: [`PinnedPeerVerifier`] accepts only the key the registry
//! holds for the node it meant to reach (checked against the node id when it was first seen)
//! and still checks the handshake signature, so a copied certificate is useless
//! without its key. A callee asks every client for a certificate but does not require one
//! (browsers have none); [`AnyKeyClientVerifier`] checks the signature and [`peer_key`] hands
//! the key to the request, which is the only thing the HTTP layer ever learns a peer from.

use std::any::Any;
use std::sync::Arc;

use actix_web::dev::Extensions;
use aienv_actors::identity::{KeyFingerprint, NodeIdentity};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The key a TLS client proved it holds, stored in the connection's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerKey(pub KeyFingerprint);

/// The one crypto provider: ring, with AES-128-GCM preferred (both ends are aienv nodes;
/// it is a third cheaper per byte than AES-256-GCM, which ring lists first).
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
            _ => 3,
        });
    Arc::new(provider)
}

/// The LAN listener's configuration: the node's certificate, TLS 1.2 and 1.3, HTTP/1.1 and
/// HTTP/2, client certificates asked for but optional.
pub fn server_config(identity: &NodeIdentity) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(AnyKeyClientVerifier {
            algorithms: provider.signature_verification_algorithms,
        }))
        .with_single_cert(vec![certificate(identity)], private_key(identity))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration that presents this node's certificate (when given) and accepts
/// only the server key `key`. HTTP/1.1 only: transfers pipeline batches over pooled
/// connections.
pub fn client_config(
    identity: Option<&NodeIdentity>,
    key: KeyFingerprint,
) -> Result<rustls::ClientConfig, rustls::Error> {
    client_config_with(identity, Expected::Key(key))
}

/// A client configuration that accepts any server key and records it in `seen`: the first
/// contact with a static peer, whose key is then checked against the id it reports.
pub fn client_config_recording(
    identity: &NodeIdentity,
    seen: Arc<std::sync::Mutex<Option<KeyFingerprint>>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    client_config_with(Some(identity), Expected::Record(seen))
}

fn client_config_with(
    identity: Option<&NodeIdentity>,
    expected: Expected,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(PinnedPeerVerifier {
        expected,
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(identity) => {
            builder.with_client_auth_cert(vec![certificate(identity)], private_key(identity))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `HttpServer::on_connect` hook: records the key of a TLS client that presented a
/// certificate (its signature was checked during the handshake).
pub fn peer_key(connection: &dyn Any, data: &mut Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    let Some(stream) = connection.downcast_ref::<Tls>() else {
        return;
    };
    let (_, session) = stream.get_ref();
    let key = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| KeyFingerprint::of_certificate(cert).ok());
    if let Some(key) = key {
        data.insert(PeerKey(key));
    }
}

fn certificate(identity: &NodeIdentity) -> CertificateDer<'static> {
    CertificateDer::from(identity.cert_der.clone())
}

fn private_key(identity: &NodeIdentity) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone()))
}

/// Which server key a caller accepts.
#[derive(Debug)]
enum Expected {
    /// Exactly this key.
    Key(KeyFingerprint),
    /// Any key, recorded for the caller to check against what the server says it is.
    Record(Arc<std::sync::Mutex<Option<KeyFingerprint>>>),
}

/// Server certificate verifier of a node calling a peer: the presented key must be the
/// expected node's. Names, dates and issuers are not what identifies a node; the key is.
#[derive(Debug)]
pub struct PinnedPeerVerifier {
    expected: Expected,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The words that start a key-mismatch error, so callers can tell a conflict from an outage.
pub const KEY_MISMATCH: &str = "peer key mismatch";

impl ServerCertVerifier for PinnedPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = KeyFingerprint::of_certificate(end_entity)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        match &self.expected {
            Expected::Key(key) if *key == presented => Ok(ServerCertVerified::assertion()),
            Expected::Key(key) => Err(rustls::Error::General(format!(
                "{KEY_MISMATCH}: expected key {key}, the server presented key {presented}"
            ))),
            Expected::Record(seen) => {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(presented);
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Client certificate verifier of the LAN listener: any key is welcome to prove itself (who
/// it is decides what it may see, later, per request); browsers send none.
#[derive(Debug)]
struct AnyKeyClientVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyKeyClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        KeyFingerprint::of_certificate(end_entity)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A client configuration for ordinary web servers (outgoing notifications): the system's
/// root certificates (`/etc/ssl/certs` on Debian), checked the usual way.
pub fn web_client_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "reading the system's root certificates");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
