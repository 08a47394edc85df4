//! TLS in front of a local server: a self-signed certificate and a terminator.

/// A self-signed certificate for `127.0.0.1` and `localhost` in `dir`, made by the `openssl`
/// command: returns the paths of the certificate (also the CA clients trust) and its key.
pub fn self_signed_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let output = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command (Debian's openssl package) makes test certificates");
    assert!(
        output.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (cert, key)
}

/// `scripts/tls_terminator.js`: TLS on a free loopback port, decrypted and piped to `target`.
pub struct TlsTerminator {
    child: std::process::Child,
    /// `127.0.0.1:port` for clients.
    pub addr: String,
}

impl TlsTerminator {
    pub fn start(cert: &std::path::Path, key: &std::path::Path, target: &str) -> TlsTerminator {
        use std::io::BufRead;
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tls_terminator.js");
        let mut child = std::process::Command::new("node")
            .arg(script)
            .arg(cert)
            .arg(key)
            .arg(target)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node runs scripts/tls_terminator.js");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("tls_terminator.js said {line:?}"));
        TlsTerminator {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
