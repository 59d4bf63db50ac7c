//! Lab certificates for etcd's mutual TLS: a CA, a server certificate for the members'
//! addresses and one client certificate per agent or tool, written as PEM files (keys readable
//! by their owner only). Not a production PKI: nothing expires soon and nothing is revoked.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};

use super::EtcdConfig;

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating a key or signing a certificate failed.
    #[error("making the {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// A client name that cannot be a file name.
    #[error("client name {0:?} must be non-empty and free of '/', '.' at the start and NUL")]
    BadName(String),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its key on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where [`Pki::create`] wrote everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    /// `ca.pem`; its key is `ca-key.pem`.
    pub ca: CertFiles,
    /// `server.pem`, `server-key.pem`.
    pub server: CertFiles,
    /// `<name>.pem`, `<name>-key.pem` by client name.
    pub clients: BTreeMap<String, CertFiles>,
}

impl PkiFiles {
    /// A client configuration that authenticates as `client` (`None` for an unknown name).
    pub fn client_config(&self, client: &str, endpoints: Vec<String>) -> Option<EtcdConfig> {
        let files = self.clients.get(client)?;
        let mut config = EtcdConfig::new(endpoints);
        config.ca_file = Some(self.ca.cert.clone());
        config.cert_file = Some(files.cert.clone());
        config.key_file = Some(files.key.clone());
        Some(config)
    }
}

/// Makes lab certificates.
pub struct Pki;

impl Pki {
    /// Writes a CA, a server certificate (for `server_ips`, 127.0.0.1 and `localhost`; good for
    /// server and client authentication, as etcd members also dial each other) and one client
    /// certificate per name (CN = the name) into `dir`.
    pub fn create(dir: &Path, server_ips: &[IpAddr], clients: &[&str]) -> Result<PkiFiles, PkiError> {
        for name in clients {
            if name.is_empty() || name.contains('/') || name.starts_with('.') || name.contains('\0') {
                return Err(PkiError::BadName(name.to_string()));
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write { path: dir.to_path_buf(), source })?;

        let ca_key = key("CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "Sluice etcd CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = params.self_signed(&ca_key).map_err(|source| PkiError::Generate { what: "CA certificate".into(), source })?;
        let ca = write_pair(dir, "ca", &ca_cert, &ca_key)?;

        let mut sans = vec![SanType::DnsName(
            "localhost".try_into().map_err(|source| PkiError::Generate { what: "server certificate".into(), source })?,
        )];
        let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        for ip in server_ips {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        sans.extend(ips.into_iter().map(SanType::IpAddress));
        let server = issue(
            dir,
            "server",
            "etcd",
            sans,
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            &ca_cert,
            &ca_key,
        )?;

        let mut out = BTreeMap::new();
        for name in clients {
            let files = issue(dir, name, name, Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth], &ca_cert, &ca_key)?;
            out.insert(name.to_string(), files);
        }
        Ok(PkiFiles { ca, server, clients: out })
    }
}

fn key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate().map_err(|source| PkiError::Generate { what: what.into(), source })
}

fn issue(
    dir: &Path,
    file: &str,
    common_name: &str,
    sans: Vec<SanType>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    ca_cert: &Certificate,
    ca_key: &KeyPair,
) -> Result<CertFiles, PkiError> {
    let what = format!("{file} certificate");
    let key = key(&what)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, ca_cert, ca_key).map_err(|source| PkiError::Generate { what, source })?;
    write_pair(dir, file, &cert, &key)
}

fn write_pair(dir: &Path, name: &str, cert: &Certificate, key: &KeyPair) -> Result<CertFiles, PkiError> {
    let files = CertFiles { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}-key.pem")) };
    write(&files.cert, cert.pem().as_bytes(), 0o644)?;
    write(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(files)
}

/// Writes a file created with `mode`, so a key is never readable by others, not even briefly.
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| PkiError::Write { path: path.to_path_buf(), source };
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(err)?;
    // An existing file keeps its mode through `open`: set it explicitly.
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(err)?;
    file.write_all(bytes).map_err(err)
}
