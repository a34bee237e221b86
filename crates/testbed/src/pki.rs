//! The local control plane's certificates: one CA that signs the API server's serving
//! certificate and every client certificate, plus the service-account signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A client identity: the API server maps CN to the user and O to its groups.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity {
    pub file_stem: &'static str,
    pub user: &'static str,
    pub group: Option<&'static str>,
}

pub const ADMIN: ClientIdentity = ClientIdentity {
    file_stem: "admin",
    user: "local-cluster-admin",
    group: Some("system:masters"),
};
pub const CONTROLLER_MANAGER: ClientIdentity = ClientIdentity {
    file_stem: "kube-controller-manager",
    user: "system:kube-controller-manager",
    group: None,
};
pub const SCHEDULER: ClientIdentity = ClientIdentity {
    file_stem: "kube-scheduler",
    user: "system:kube-scheduler",
    group: None,
};

/// Paths of the PEM files written by [`write_pki`].
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_public_key: PathBuf,
    dir: PathBuf,
}

impl PkiFiles {
    pub fn client_cert(&self, id: ClientIdentity) -> PathBuf {
        self.dir.join(format!("{}.crt", id.file_stem))
    }
    pub fn client_key(&self, id: ClientIdentity) -> PathBuf {
        self.dir.join(format!("{}.key", id.file_stem))
    }
}

fn generated<T>(what: &'static str, r: Result<T, rcgen::Error>) -> Result<T, PkiError> {
    r.map_err(|source| PkiError::Generate { what, source })
}

fn write(path: &Path, contents: &str) -> Result<(), PkiError> {
    std::fs::write(path, contents).map_err(|source| PkiError::Write {
        path: path.to_owned(),
        source,
    })
}

fn distinguished_name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

/// Writes a fresh CA, a serving certificate for 127.0.0.1/localhost, the client
/// certificates of `clients`, and a service-account key into `dir`.
pub fn write_pki(dir: &Path, clients: &[ClientIdentity]) -> Result<PkiFiles, PkiError> {
    let ca_key = generated("CA key", KeyPair::generate())?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = distinguished_name("local-cluster-ca", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key_pem = ca_key.serialize_pem();
    let ca = generated("CA", CertifiedIssuer::self_signed(ca_params, ca_key))?;

    let files = PkiFiles {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        service_account_key: dir.join("service-account.key"),
        service_account_public_key: dir.join("service-account.pub"),
        dir: dir.to_owned(),
    };
    write(&files.ca_cert, &ca.pem())?;
    write(&files.ca_key, &ca_key_pem)?;

    let serving_key = generated("serving key", KeyPair::generate())?;
    let mut serving = generated(
        "serving certificate parameters",
        CertificateParams::new(vec![
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ]),
    )?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    serving.distinguished_name = distinguished_name("kube-apiserver", None);
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = generated("serving certificate", serving.signed_by(&serving_key, &ca))?;
    write(&files.serving_cert, &serving_cert.pem())?;
    write(&files.serving_key, &serving_key.serialize_pem())?;

    for id in clients {
        let key = generated("client key", KeyPair::generate())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(id.user, id.group);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = generated("client certificate", params.signed_by(&key, &ca))?;
        write(&files.client_cert(*id), &cert.pem())?;
        write(&files.client_key(*id), &key.serialize_pem())?;
    }

    let sa_key = generated("service-account key", KeyPair::generate())?;
    write(&files.service_account_key, &sa_key.serialize_pem())?;
    write(&files.service_account_public_key, &sa_key.public_key_pem())?;
    Ok(files)
}
