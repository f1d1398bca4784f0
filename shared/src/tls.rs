//! TLS settings both binaries share: the extra CA bundle Warren trusts beside the system's roots
//! (`WARREN_TLS_CA_FILE`, for RabbitMQ and PostgreSQL alike) and the client certificate a broker
//! may require (`WARREN_TLS_CLIENT_CERT`, `WARREN_TLS_CLIENT_KEY`). One TLS stack: rustls with
//! ring, as the webhooks use; nothing is compiled from C.
//!
//! TLS is on when a URL asks for it (`amqps://`, PostgreSQL's `sslmode`), never silently off:
//! [`explain`] turns a handshake failure into which of the usual three it was.

use std::path::{Path, PathBuf};

use clap::Args;

/// The TLS files (`WARREN_TLS_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct TlsConfig {
    /// A PEM bundle of CA certificates to trust, beside the system's roots, for `amqps://`
    /// brokers and PostgreSQL with `sslmode=verify-ca`/`verify-full` (e.g. a private CA, or a
    /// managed service's CA).
    #[arg(
        long = "tls-ca-file",
        env = "WARREN_TLS_CA_FILE",
        value_name = "WARREN_TLS_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,

    /// A PEM certificate (chain) to present to a broker that requires client certificates;
    /// needs `WARREN_TLS_CLIENT_KEY`.
    #[arg(
        long = "tls-client-cert",
        env = "WARREN_TLS_CLIENT_CERT",
        value_name = "WARREN_TLS_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// The PEM (PKCS#8) private key of `WARREN_TLS_CLIENT_CERT`.
    #[arg(
        long = "tls-client-key",
        env = "WARREN_TLS_CLIENT_KEY",
        value_name = "WARREN_TLS_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

/// A TLS file that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot read {variable} ({path}): {reason}")]
pub struct TlsFileError {
    /// The variable that names the file.
    pub variable: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

fn read(variable: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let bytes = std::fs::read(path).map_err(|error| TlsFileError {
        variable,
        path: path.display().to_string(),
        reason: error.to_string(),
    })?;
    if !bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(TlsFileError {
            variable,
            path: path.display().to_string(),
            reason: "it holds no PEM block (-----BEGIN ...); give a PEM file".into(),
        });
    }
    Ok(bytes)
}

impl TlsConfig {
    /// The extra CA bundle, as PEM text, if one is set.
    pub fn ca_pem(&self) -> Result<Option<String>, TlsFileError> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let bytes = read("WARREN_TLS_CA_FILE", path)?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| TlsFileError {
                variable: "WARREN_TLS_CA_FILE",
                path: path.display().to_string(),
                reason: "it is not text".into(),
            })
    }

    /// The extra CA certificates, parsed, for a rustls root store.
    pub fn ca_certificates(
        &self,
    ) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsFileError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let Some(pem) = self.ca_pem()? else {
            return Ok(Vec::new());
        };
        let path = self
            .ca_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsFileError {
                variable: "WARREN_TLS_CA_FILE",
                path,
                reason: format!("not a PEM bundle of certificates: {error}"),
            })
    }

    /// What lapin needs for `amqps://`: the extra CAs and the client identity, if set.
    pub fn amqp(&self) -> Result<lapin::tcp::OwnedTLSConfig, TlsFileError> {
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: read("WARREN_TLS_CLIENT_CERT", cert)?,
                key: read("WARREN_TLS_CLIENT_KEY", key)?,
            }),
            _ => None,
        };
        Ok(lapin::tcp::OwnedTLSConfig {
            identity,
            cert_chain: self.ca_pem()?,
        })
    }
}

/// What a TLS failure was, in words an operator can act on, naming `variable` (the URL's
/// setting): an untrusted certificate, a certificate for another host name, or a server that
/// does not speak TLS there. `None` when `error_text` is not a TLS failure.
#[must_use]
pub fn explain(error_text: &str, variable: &str) -> Option<String> {
    let untrusted = [
        "UnknownIssuer",
        "unknown issuer",
        "BadSignature",
        "NotValidYet",
        "Expired",
    ];
    if untrusted.iter().any(|needle| error_text.contains(needle)) {
        return Some(format!(
            "TLS refused: the server's certificate is not signed by a CA this process trusts (or \
             is expired); add its CA to WARREN_TLS_CA_FILE, or check the host in {variable}"
        ));
    }
    if error_text.contains("NotValidForName") || error_text.contains("not valid for name") {
        return Some(format!(
            "TLS refused: the server's certificate does not name the host in {variable}; connect \
             by a name the certificate holds"
        ));
    }
    let plaintext = [
        "InvalidContentType",
        "corrupt message",
        "CorruptMessage",
        "server does not support TLS",
        "server does not support SSL",
    ];
    if plaintext.iter().any(|needle| error_text.contains(needle)) {
        return Some(format!(
            "TLS refused: the server does not speak TLS there, but {variable} asks for it (an \
             amqps:// URL needs the broker's TLS listener, usually port 5671; PostgreSQL needs \
             ssl = on)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_failures_are_told_apart_and_name_the_variable() {
        let untrusted = explain("invalid peer certificate: UnknownIssuer", "WARREN_AMQP_URL");
        assert!(untrusted.is_some_and(|t| t.contains("WARREN_TLS_CA_FILE")));
        let name = explain(
            "invalid peer certificate: certificate not valid for name \"127.0.0.1\"",
            "WARREN_DATABASE_URL",
        );
        assert!(name.is_some_and(|t| t.contains("WARREN_DATABASE_URL") && t.contains("host")));
        let plain = explain(
            "received corrupt message of type InvalidContentType",
            "WARREN_AMQP_URL",
        );
        assert!(plain.is_some_and(|t| t.contains("does not speak TLS")));
        assert_eq!(
            explain("Connection refused (os error 111)", "WARREN_AMQP_URL"),
            None
        );
    }
}
