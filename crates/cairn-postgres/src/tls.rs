//! TLS to PostgreSQL, with libpq's settings: `sslmode` `disable`,
//! `prefer` (the default: TLS when the server offers it), `require`
//! (TLS, the certificate not checked), `verify-ca` and `verify-full` (the
//! certificate checked against `sslrootcert`, else the system's CA bundle,
//! and its name against the host: verify-ca is checked as verify-full), in
//! a URL's query or a key=value string. tokio-postgres knows only the first
//! three and no `sslrootcert`, so those are taken out here and the checking
//! is done by the rustls connector (tokio-postgres-rustls).

use std::path::PathBuf;
use std::sync::Arc;

use cairn_store::StoreError;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};

/// System CA bundles, as Debian, Fedora and Alpine keep them.
const SYSTEM_BUNDLES: [&str; 3] =
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// A connection string as tokio-postgres reads it, and the connector that
/// does what its TLS settings ask.
pub(crate) fn split(url: &str) -> Result<(String, MakeRustlsConnect), StoreError> {
    let (cleaned, verify, rootcert) = take_settings(url)?;
    let config = if verify { verifying(rootcert)? } else { encrypting() };
    Ok((cleaned, MakeRustlsConnect::new(config)))
}

fn invalid(rule: String) -> StoreError {
    StoreError::Invalid { field: "postgres", rule }
}

/// Takes `sslrootcert` out and maps verify modes to `require`; returns the
/// rest, whether to verify, and the root file.
fn take_settings(url: &str) -> Result<(String, bool, Option<PathBuf>), StoreError> {
    let (mut verify, mut rootcert, mut modes, mut disabled) = (false, None, 0, false);
    let mut mode = |key: &str, value: &str| -> Option<String> {
        if key == "sslmode" {
            modes += 1;
            disabled = value == "disable";
        }
        match (key, value) {
            ("sslrootcert", path) => {
                rootcert = Some(PathBuf::from(path));
                None
            }
            ("sslmode", "verify-ca" | "verify-full") => {
                verify = true;
                Some("require".to_owned())
            }
            _ => Some(value.to_owned()),
        }
    };
    let cleaned = if let Some(rest) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) {
        let scheme = &url[..url.len() - rest.len()];
        match rest.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    let decoded = percent_decode(value);
                    if let Some(value) = mode(key, &decoded) {
                        kept.push(if value == decoded { pair.to_owned() } else { format!("{key}={value}") });
                    }
                }
                if kept.is_empty() { format!("{scheme}{base}") } else { format!("{scheme}{base}?{}", kept.join("&")) }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (key, value) in pairs(url)? {
            if let Some(value) = mode(&key, &value) {
                kept.push(format!("{key}={}", quote(&value)));
            }
        }
        kept.join(" ")
    };
    if modes > 1 {
        // Which one counts would differ between readers: refused.
        return Err(invalid("sslmode is given more than once".to_owned()));
    }
    if rootcert.is_some() && !verify {
        // As libpq: a root file given means the certificate is checked.
        verify = !disabled;
    }
    Ok((cleaned, verify, rootcert))
}

/// The `key=value` pairs of a connection string, values unquoted (libpq:
/// single quotes, backslash escapes, spaces around `=` allowed).
fn pairs(text: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut chars = text.chars().peekable();
    let mut out = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid(format!("the connection string has {key:?} without a value")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(invalid("the connection string has an unclosed quote".to_owned())),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// A value as a connection string holds it.
fn quote(value: &str) -> String {
    if !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_owned();
    }
    let mut out = String::from("'");
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks the server's certificate against `rootcert` (else the system's
/// bundle) and its name against the host.
fn verifying(rootcert: Option<PathBuf>) -> Result<rustls::ClientConfig, StoreError> {
    let path = match rootcert {
        Some(path) => path,
        None => SYSTEM_BUNDLES.iter().map(PathBuf::from).find(|path| path.is_file()).ok_or_else(|| {
            invalid("sslmode=verify-full needs sslrootcert=FILE (no system CA bundle found)".to_owned())
        })?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(&path)
        .map_err(|error| invalid(format!("sslrootcert {}: {error}", path.display())))?;
    for certificate in certificates {
        let certificate = certificate.map_err(|error| invalid(format!("sslrootcert {}: {error}", path.display())))?;
        roots.add(certificate).map_err(|error| invalid(format!("sslrootcert {}: {error}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(invalid(format!("sslrootcert {}: no certificate in it", path.display())));
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// TLS without checking the certificate (libpq's `prefer` and `require`):
/// private from onlookers, not from someone in the middle.
fn encrypting() -> rustls::ClientConfig {
    let provider = provider();
    let verifier = Arc::new(Unchecked(provider.clone()));
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

/// Accepts any certificate, but still checks the handshake's signatures
/// (the session is with whoever holds the certificate's key).
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_settings_are_taken_out() {
        let (url, verify, root) =
            take_settings("postgres://u:p@h:5/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x")
                .expect("parsed");
        assert_eq!(url, "postgres://u:p@h:5/db?sslmode=require&application_name=x");
        assert!(verify);
        assert_eq!(root, Some(PathBuf::from("/tmp/ca.pem")));
        let (url, verify, root) = take_settings("host=h sslmode=require dbname=d").expect("parsed");
        assert_eq!((url.as_str(), verify, root), ("host=h sslmode=require dbname=d", false, None));
        let (url, verify, _) = take_settings("host=h sslrootcert=/ca.pem").expect("parsed");
        assert_eq!((url.as_str(), verify), ("host=h", true));
        let (url, _, _) = take_settings("host=h password='a b\\'c' sslmode=verify-full").expect("parsed");
        assert_eq!(url, "host=h password='a b\\'c' sslmode=require", "quoted values survive");
        assert!(take_settings("postgres://h/db?sslmode=verify-full&sslmode=disable").is_err(), "two sslmodes");
        let (url, verify, _) = take_settings("postgresql://h/db").expect("parsed");
        assert_eq!((url.as_str(), verify), ("postgresql://h/db", false));
    }
}
