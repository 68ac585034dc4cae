//! TLS to PostgreSQL: a private cluster serving TLS with a certificate made
//! here; cairn connects with libpq's settings and checks it when asked.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use cairn_postgres::{Cluster, Options, Postgres};
use cairn_store::Storage;

/// Writes `name` into `dir`, readable by the cluster's user only.
fn place(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if root {
        assert!(Command::new("chown").arg("postgres").arg(&path).status().unwrap().success());
    }
    assert!(Command::new("chmod").arg("600").arg(&path).status().unwrap().success());
    path.display().to_string()
}

#[test]
fn tls_is_used_and_the_certificate_checked_when_asked() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    if Command::new("id").arg("-u").output().unwrap().stdout == b"0\n" {
        assert!(Command::new("chown").arg("postgres").arg(dir.path()).status().unwrap().success());
    }
    let cert = place(dir.path(), "server.crt", &certified.cert.pem());
    let key = place(dir.path(), "server.key", &certified.signing_key.serialize_pem());
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let wrong_ca = dir.path().join("other.pem");
    std::fs::write(&wrong_ca, other.cert.pem()).unwrap();
    let (cert_setting, key_setting) = (format!("'{cert}'"), format!("'{key}'"));
    let cluster = Cluster::start(&[
        ("fsync", "off"),
        ("ssl", "on"),
        ("ssl_cert_file", &cert_setting),
        ("ssl_key_file", &key_setting),
    ])
    .unwrap();
    let url = cluster.url("postgres");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // Checked against the right root: connects, over TLS.
        let checked = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
        let storage = Postgres::open(&checked, Options::default()).await.unwrap();
        let ssl = cluster
            .psql("select count(*) from pg_stat_ssl join pg_stat_activity using (pid) where application_name = 'cairn' and ssl")
            .unwrap();
        assert!(ssl.trim().parse::<u32>().unwrap() >= 1, "cairn's connections use TLS: {ssl}");
        assert!(storage.topics().await.unwrap().is_empty());
        drop(storage);
        // Against another root: refused, saying why.
        let wrong = format!("{url}?sslmode=verify-full&sslrootcert={}", wrong_ca.display());
        let error = Postgres::open(&wrong, Options::default()).await.err().expect("an unknown certificate is refused");
        assert_eq!(error.code(), "unavailable");
        assert!(error.to_string().contains("certificate"), "{error}");
        // require: TLS without the check, as libpq does.
        let required = format!("{url}?sslmode=require");
        Postgres::open(&required, Options::default()).await.unwrap();
        // A missing root file is a clear configuration error.
        let missing = format!("{url}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        let error = Postgres::open(&missing, Options::default()).await.err().expect("a missing root file");
        assert_eq!(error.code(), "invalid");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    });
}
