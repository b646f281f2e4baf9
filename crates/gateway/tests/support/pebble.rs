//! A real ACME server for tests: Debian's `pebble`, with `pebble-challtestsrv` as its DNS (every
//! name resolves to 127.0.0.1). Validation is real: pebble fetches the HTTP-01 answer from
//! `http_port` on loopback.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Pebble {
    pub directory_url: String,
    /// The CA that signs pebble's own HTTPS listener (for the ACME client).
    pub listener_ca: PathBuf,
    /// The root that signs issued certificates (for clients of the gateway).
    pub issuing_root_pem: String,
    children: Vec<Child>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port`; `None` (with a loud message) when pebble
    /// is not installed outside CI. In CI it must be there (`.ci/run` installs it).
    pub async fn start(dir: &Path, http_port: u16, validity_secs: u64) -> Option<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if Command::new("pebble")
            .arg("-h")
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "pebble is not installed in CI: .ci/run must install it (apt-get install pebble)"
                );
            }
            eprintln!(
                "\n*** SKIPPED: ACME test: pebble is not installed (apt-get install pebble; bash .ci/run does) ***\n"
            );
            return None;
        }
        let (acme, management, dns) = (free_port(), free_port(), free_port());
        // pebble serves ACME over HTTPS only: give it a certificate from a CA of our own.
        let (ca_pem, cert_pem, key_pem) = listener_certificate();
        let listener_ca = dir.join("pebble-listener-ca.pem");
        std::fs::write(&listener_ca, ca_pem).unwrap();
        std::fs::write(dir.join("pebble.pem"), cert_pem).unwrap();
        std::fs::write(dir.join("pebble.key"), key_pem).unwrap();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("pebble.pem"), "privateKey": dir.join("pebble.key"),
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let dns_server = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns}"),
            ])
            .args([
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .unwrap();
        let pebble = Command::new("pebble")
            .args([
                "-config",
                dir.join("pebble.json").to_str().unwrap(),
                "-dnsserver",
                &format!("127.0.0.1:{dns}"),
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap();
        let mut this = Self {
            directory_url: format!("https://localhost:{acme}/dir"),
            listener_ca: listener_ca.clone(),
            issuing_root_pem: String::new(),
            children: vec![dns_server, pebble],
        };
        let client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&listener_ca).unwrap()).unwrap(),
            )
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client
                .get(format!("https://localhost:{management}/roots/0"))
                .send()
                .await
                && r.status().is_success()
            {
                this.issuing_root_pem = r.text().await.unwrap();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not start; see {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(this)
    }
}

fn listener_certificate() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pebble listener test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}
