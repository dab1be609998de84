//! TLS for both connections (replication and metadata), with rustls, and the
//! `tls-server-end-point` channel binding of SCRAM-SHA-256-PLUS.
//!
//! `sslmode` keeps libpq's meanings (34.19.1 "Client Verification of Server Certificates"):
//! `require` encrypts without checking who answers (unless a root certificate is given, then it
//! acts as `verify-ca`); `verify-ca` checks the chain up to a trusted root; `verify-full` also
//! checks that the certificate names the host connected to (SNI is sent for host names, not
//! for IP addresses, as libpq does). The root certificates come from `sslrootcert`: a PEM file,
//! or `system` for the operating system's store.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::Digest;

use super::error::PgError;
use super::params::{RootCert, SslMode, TlsParams};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(msg: String) -> PgError {
    PgError::Tls(msg)
}

/// The rustls configuration for `params` (whatever the mode; `Disable` is never asked).
pub(crate) fn client_config(params: &TlsParams) -> Result<Arc<ClientConfig>, PgError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(format!("TLS setup failed: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (params.mode, &params.root_cert) {
        (SslMode::VerifyCa | SslMode::VerifyFull, Some(root)) => {
            let roots = Arc::new(root_store(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| tls_error(format!("cannot use the root certificates: {e}")))?;
            if params.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            // ConnParams::resolve refuses this; a hand-built TlsParams must not verify nothing.
            return Err(tls_error(
                "sslmode=verify-ca/verify-full needs sslrootcert (a PEM file, or system)"
                    .to_string(),
            ));
        }
        _ => Arc::new(Unverified(provider.signature_verification_algorithms)),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&params.cert, &params.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                tls_error(format!("cannot read the client key {}: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_error(format!("the client certificate is unusable: {e}")))?
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(tls_error(
                "a client certificate needs both sslcert and sslkey".to_string(),
            ));
        }
        (None, None) => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PgError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(format!("cannot read {}: {e}", path.display())))?
        .collect();
    let certs = certs.map_err(|e| tls_error(format!("cannot read {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn root_store(root: &RootCert) -> Result<RootCertStore, PgError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            for c in read_certs(path)? {
                store.add(c).map_err(|e| {
                    tls_error(format!(
                        "a certificate in {} is unusable: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(tls_error(
                    "sslrootcert=system: the operating system's certificate store is empty or \
                     unreadable (on Debian: apt-get install ca-certificates)"
                        .to_string(),
                ));
            }
        }
    }
    Ok(store)
}

/// The name to verify and send as SNI: a DNS name, or an IP address (no SNI).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, PgError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| tls_error(format!("`{host}` is not a host name TLS can check")))
}

/// `require` (without a root certificate): encryption only. The handshake signature is still
/// checked, so the session key belongs to whoever holds the certificate's key.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The `tls-server-end-point` channel binding data (RFC 5929 section 4.1): the hash of the
/// server's certificate, with the hash function of the certificate's signature algorithm, and
/// SHA-256 where that is MD5 or SHA-1. `None` when the algorithm names no hash (Ed25519):
/// PostgreSQL cannot bind to such a certificate either.
pub(crate) fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    // DER OIDs of the signature algorithms, by hash.
    const SHA256: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b], // sha256WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],       // ecdsa-with-SHA256
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05], // sha1WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04], // md5WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01],             // ecdsa-with-SHA1
    ];
    const SHA384: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    let oid = signature_algorithm(cert)?;
    if SHA256.contains(&oid) {
        Some(sha2::Sha256::digest(cert).to_vec())
    } else if SHA384.contains(&oid) {
        Some(sha2::Sha384::digest(cert).to_vec())
    } else if SHA512.contains(&oid) {
        Some(sha2::Sha512::digest(cert).to_vec())
    } else {
        None
    }
}

/// The OID of `Certificate.signatureAlgorithm` (RFC 5280 section 4.1): the second element of
/// the outer SEQUENCE, an AlgorithmIdentifier SEQUENCE whose first element is the OID.
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    /// One DER TLV at the start of `b`: (tag, value, rest).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = b.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |a, &x| (a << 8) | usize::from(x));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, _, rest) = tlv(cert)? else {
        return None;
    };
    let (0x30, alg, _) = tlv(rest)? else {
        return None;
    };
    let (0x06, oid, _) = tlv(alg)? else {
        return None;
    };
    Some(oid)
}

/// TLS for the metadata connection (tokio-postgres), from the same configuration.
#[derive(Clone)]
pub(crate) struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeRustls {
    pub(crate) fn new(params: &TlsParams) -> Result<MakeRustls, PgError> {
        Ok(MakeRustls {
            config: client_config(params)?,
        })
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = PgError;

    /// Called for every host, unix sockets too (where no TLS is used): a name TLS cannot check
    /// is an error only if a handshake is attempted with it.
    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, PgError> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            name: server_name(domain).map_err(|e| e.to_string()),
        })
    }
}

pub(crate) struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: Result<ServerName<'static>, String>,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<RustlsStream<S>>> + Send>,
    >;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.map_err(std::io::Error::other)?;
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(Box::new(s)))
        })
    }
}

/// A TLS stream for tokio-postgres, which asks it for the channel binding data.
pub(crate) struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        match peer_end_point(&self.0) {
            Some(hash) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(hash),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

/// The channel binding data of an established TLS session.
pub(crate) fn peer_end_point<S>(s: &tokio_rustls::client::TlsStream<S>) -> Option<Vec<u8>> {
    let (_, conn) = s.get_ref();
    let cert = conn.peer_certificates()?.first()?;
    server_end_point(cert)
}

impl<S> tokio::io::AsyncRead for RustlsStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S> tokio::io::AsyncWrite for RustlsStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for localhost, signed with `alg`.
    fn self_signed(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn the_signature_algorithm_picks_the_binding_hash() {
        let der = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            server_end_point(&der),
            Some(sha2::Sha256::digest(&der).to_vec())
        );
        let der = self_signed(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            server_end_point(&der),
            Some(sha2::Sha384::digest(&der).to_vec())
        );
        assert_eq!(server_end_point(&self_signed(&rcgen::PKCS_ED25519)), None);
        assert_eq!(server_end_point(b"\x30\x03\x02\x01"), None);
        assert_eq!(server_end_point(b""), None);
    }

    #[test]
    fn verify_modes_without_a_root_certificate_are_refused() {
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let params = TlsParams {
                mode,
                ..TlsParams::default()
            };
            assert!(client_config(&params).is_err(), "{mode:?} verified nothing");
        }
        assert!(client_config(&TlsParams::default()).is_ok());
    }
}
