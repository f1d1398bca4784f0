//! TLS to PostgreSQL with libpq's meaning of `sslmode` (tokio-postgres itself knows only
//! `disable`, `prefer` and `require`, and no certificate checks):
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (the default) | if the server offers it | not checked |
//! | `require` | always | not checked, unless `sslrootcert` is given: then as `verify-ca` |
//! | `verify-ca` | always | signed by a trusted CA |
//! | `verify-full` | always | signed by a trusted CA, and names the host connected to |
//!
//! Trusted CAs: the system's, `WARREN_TLS_CA_FILE`, and `sslrootcert` (`sslrootcert=system`
//! means the system's only). The pool and the change feed (LISTEN) connect alike. rustls with
//! ring, the one TLS stack of the process.

use std::sync::Arc;

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tokio_postgres_rustls::MakeRustlsConnect;
use warren_shared::tls::TlsConfig;

use super::super::StoreError;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Not at all (`prefer`, `require`).
    Nothing,
    /// Signed by a trusted CA (`verify-ca`).
    Chain,
    /// Signed by a trusted CA and naming the host (`verify-full`).
    ChainAndName,
}

/// `url` with its `sslmode` and `sslrootcert` taken out and the mode tokio-postgres should use
/// put back, and the TLS connector that checks the server as `sslmode` says.
pub(super) fn prepare(
    url: &str,
    files: &TlsConfig,
) -> Result<(String, MakeRustlsConnect), StoreError> {
    let bad = |why: String| StoreError::unavailable(format!("bad WARREN_DATABASE_URL: {why}"));
    let (rest, params) = split_params(url);
    let mut mode = "prefer".to_owned();
    let mut root_cert = None;
    let mut kept = Vec::new();
    for (key, value) in params {
        match key.as_str() {
            "sslmode" => mode = value,
            "sslrootcert" => root_cert = Some(value),
            _ => kept.push((key, value)),
        }
    }
    let (tokio_mode, check) = match mode.as_str() {
        "disable" => ("disable", Check::Nothing),
        "allow" | "prefer" => ("prefer", Check::Nothing),
        "require" if root_cert.is_some() => ("require", Check::Chain),
        "require" => ("require", Check::Nothing),
        "verify-ca" => ("require", Check::Chain),
        "verify-full" => ("require", Check::ChainAndName),
        other => {
            return Err(bad(format!(
                "sslmode={other:?} is not one of disable, allow, prefer, require, verify-ca, \
                 verify-full"
            )));
        }
    };
    kept.push(("sslmode".to_owned(), tokio_mode.to_owned()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(AnyCertificate(provider.clone())),
        Check::Chain | Check::ChainAndName => {
            let roots = roots(files, root_cert.as_deref()).map_err(bad)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| bad(format!("cannot check certificates: {e}")))?;
            if check == Check::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((
        join_params(&rest, url, &kept),
        MakeRustlsConnect::new(config),
    ))
}

/// The CAs a `verify-*` connection trusts.
fn roots(files: &TlsConfig, root_cert: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let extra = files.ca_certificates().map_err(|e| e.to_string())?;
    roots.add_parsable_certificates(extra);
    if let Some(path) = root_cert.filter(|path| *path != "system") {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read sslrootcert {path:?}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("sslrootcert {path:?} holds no certificate"));
        }
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        return Err(
            "no CA to check the server against: set sslrootcert or WARREN_TLS_CA_FILE, \
                    or install the system's CA bundle"
                .into(),
        );
    }
    Ok(roots)
}

/// `url` without `sslmode` and `sslrootcert`, which tokio-postgres cannot read (for messages).
pub(super) fn without_ssl_params(url: &str) -> String {
    let (rest, params) = split_params(url);
    let kept: Vec<(String, String)> = params
        .into_iter()
        .filter(|(key, _)| key != "sslmode" && key != "sslrootcert")
        .collect();
    if kept.is_empty() {
        rest
    } else {
        join_params(&rest, url, &kept)
    }
}

/// The parameters of a URL (`postgresql://…?k=v&…`) or a key/value string (`host=… k=v`), and
/// what is left without them.
fn split_params(url: &str) -> (String, Vec<(String, String)>) {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if is_url {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let params = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key.to_owned(), percent_decode(value))
            })
            .collect();
        return (base.to_owned(), params);
    }
    let mut rest = Vec::new();
    let mut params = Vec::new();
    for token in url.split_whitespace() {
        match token.split_once('=') {
            Some((key @ ("sslmode" | "sslrootcert"), value)) => {
                params.push((key.to_owned(), value.trim_matches('\'').to_owned()));
            }
            _ => rest.push(token),
        }
    }
    (rest.join(" "), params)
}

/// `rest` with `params` put back in the form `original` had.
fn join_params(rest: &str, original: &str, params: &[(String, String)]) -> String {
    let is_url = original.starts_with("postgres://") || original.starts_with("postgresql://");
    if is_url {
        let query: Vec<String> = params
            .iter()
            .map(|(key, value)| format!("{key}={}", percent_encode(value)))
            .collect();
        format!("{rest}?{}", query.join("&"))
    } else {
        let extra: Vec<String> = params
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        format!("{rest} {}", extra.join(" "))
    }
}

fn percent_decode(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

/// What a query value keeps as it is: RFC 3986's unreserved characters, and `/` (paths in
/// `sslrootcert`).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

fn percent_encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// Accepts any certificate (`prefer`, `require`: encryption without authentication, as
/// libpq's), but still checks that the server holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but not the name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_modes_become_what_tokio_postgres_knows() {
        let files = TlsConfig::default();
        for (url, expected) in [
            ("postgresql://u@h/db", "postgresql://u@h/db?sslmode=prefer"),
            (
                "postgresql://u@h/db?sslmode=verify-full&options=-csearch_path%3Dx",
                "postgresql://u@h/db?options=-csearch_path%3Dx&sslmode=require",
            ),
            (
                "postgres://u@h/db?sslmode=disable",
                "postgres://u@h/db?sslmode=disable",
            ),
            (
                "host=h user=u sslmode=require",
                "host=h user=u sslmode=require",
            ),
        ] {
            let (prepared, _) = prepare(url, &files).unwrap();
            assert_eq!(prepared, expected);
        }
        let refused = prepare("postgresql://u@h/db?sslmode=sometimes", &files);
        assert!(refused.is_err());
        let missing = prepare(
            "postgresql://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent",
            &files,
        );
        assert!(
            missing
                .err()
                .is_some_and(|e| e.to_string().contains("sslrootcert"))
        );
    }
}
