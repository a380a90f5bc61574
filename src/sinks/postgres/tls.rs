//! TLS for Postgres connections with libpq's `sslmode=require` semantics: the connection is
//! encrypted but the server certificate is not verified (Cloud SQL and most managed servers
//! present certificates no public root signs). rustls with the `ring` provider: no OpenSSL.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why [`pool`] could not make a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolSetupError {
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot build the pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
}

/// A connection pool of at most `max_size` connections to `pg`, with [`connector`] for TLS and
/// fast recycling; connections are opened when first needed. The Postgres sink and the
/// Postgres state backend both make theirs here.
///
/// # Errors
/// TLS could not be set up, or deadpool refused the configuration.
pub fn pool(
    pg: tokio_postgres::Config,
    max_size: usize,
) -> Result<deadpool_postgres::Pool, PoolSetupError> {
    let mgr = deadpool_postgres::Manager::from_config(
        pg,
        connector()?,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    Ok(deadpool_postgres::Pool::builder(mgr)
        .max_size(max_size)
        .build()?)
}

/// The connector every pool uses; with `tls: disable` tokio-postgres never calls it.
///
/// # Errors
/// When the crypto provider offers no usable protocol version (a build problem).
pub fn connector() -> Result<MakeRustlsConnect, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly { algorithms }))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Accepts any server certificate but still checks the handshake signatures, so the session
/// keys are bound to the certificate the server presented.
#[derive(Debug)]
struct EncryptOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
