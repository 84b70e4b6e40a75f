//! The operator CA commands, checked with the real `openssl` tool: `weft ca init` +
//! `weft ca issue` produce leaves openssl verifies, with a SPIFFE URI SAN, a P-256 key and
//! both EKUs; existing RSA roots and intermediates with chains are used as they are.

use std::path::Path;
use std::process::{Command, Output};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("running {cmd:?}: {e} (is it installed? run scripts/install-deps.sh)")
    });
    out
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn issue(dir: &Path, id: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("leaf.pem");
    let key = dir.join("leaf-key.pem");
    ok(Command::new(WEFT)
        .args(["ca", "issue", "--dir"])
        .arg(dir)
        .args(["--spiffe-id", id, "--out-cert"])
        .arg(&cert)
        .arg("--out-key")
        .arg(&key)
        .args(["--ttl", "2h"]));
    (cert, key)
}

/// A self-signed RSA 2048 root made by openssl, as an operator's existing CA would be.
fn rsa_root(key: &Path, cert: &Path, common_name: &str) {
    ok(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(key));
    ok(Command::new("openssl")
        .args(["req", "-x509", "-new", "-key"])
        .arg(key)
        .args([
            "-subj",
            &format!("/O=cluster.local/CN={common_name}"),
            "-days",
            "30",
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out"])
        .arg(cert));
}

fn assert_leaf_shape(cert: &Path, key: &Path, id: &str) {
    let text = ok(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(cert));
    assert!(
        text.contains(&format!("URI:{id}")),
        "no SPIFFE URI SAN:\n{text}"
    );
    assert!(
        !text.contains("DNS:"),
        "leaf must carry only the URI SAN:\n{text}"
    );
    assert!(
        text.contains("prime256v1") || text.contains("P-256"),
        "not a P-256 key:\n{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication"),
        "missing serverAuth EKU:\n{text}"
    );
    assert!(
        text.contains("TLS Web Client Authentication"),
        "missing clientAuth EKU:\n{text}"
    );
    assert!(text.contains("CA:FALSE"), "leaf must not be a CA:\n{text}");
    let key_text = ok(Command::new("openssl")
        .args(["pkey", "-noout", "-text", "-in"])
        .arg(key));
    assert!(
        key_text.contains("prime256v1") || key_text.contains("P-256"),
        "{key_text}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(key).unwrap().permissions());
    assert_eq!(
        mode & 0o077,
        0,
        "private key must not be readable by others"
    );
}

#[test]
fn init_then_issue_gives_a_leaf_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    ok(Command::new(WEFT)
        .args(["ca", "init", "--dir"])
        .arg(dir.path())
        .args(["--trust-domain", "example.org"]));
    for file in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        assert!(dir.path().join(file).exists(), "{file} missing");
    }
    let id = "spiffe://example.org/ns/shop/sa/order";
    let (cert, key) = issue(dir.path(), id);
    let verify = ok(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dir.path().join("root-cert.pem"))
        .arg(&cert));
    assert!(verify.contains(": OK"), "{verify}");
    assert_leaf_shape(&cert, &key, id);
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    ok(Command::new(WEFT)
        .args(["ca", "init", "--dir"])
        .arg(dir.path()));
    let before = std::fs::read(dir.path().join("ca-key.pem")).unwrap();
    let out = run(Command::new(WEFT)
        .args(["ca", "init", "--dir"])
        .arg(dir.path()));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--force"),
        "error should say how to overwrite: {stderr}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("ca-key.pem")).unwrap(),
        before
    );
    ok(Command::new(WEFT)
        .args(["ca", "init", "--force", "--dir"])
        .arg(dir.path()));
    assert_ne!(
        std::fs::read(dir.path().join("ca-key.pem")).unwrap(),
        before
    );
}

#[test]
fn issue_rejects_bad_input_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(WEFT)
        .args(["ca", "issue", "--dir"])
        .arg(dir.path())
        .args([
            "--spiffe-id",
            "spiffe://cluster.local/ns/a/sa/b",
            "--out-cert",
            "/dev/null",
            "--out-key",
            "/dev/null",
        ]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("weft ca init"),
        "should point to ca init"
    );
    ok(Command::new(WEFT)
        .args(["ca", "init", "--dir"])
        .arg(dir.path()));
    let out = run(Command::new(WEFT)
        .args(["ca", "issue", "--dir"])
        .arg(dir.path())
        .args([
            "--spiffe-id",
            "cluster.local/ns/a/sa/b",
            "--out-cert",
            "/dev/null",
            "--out-key",
            "/dev/null",
        ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spiffe://"));
    // Path tricks and names no cluster could hold are refused, never signed.
    for bad in [
        "spiffe://cluster.local/ns/../sa/x",
        "spiffe://cluster.local/ns/shop/sa/a/sa/b",
        "spiffe://cluster.local/ns/Shop!/sa/x",
        "spiffe://cluster.local/ns/shop/sa/",
    ] {
        let cert = dir.path().join("bad-cert.pem");
        let out = run(Command::new(WEFT)
            .args(["ca", "issue", "--dir"])
            .arg(dir.path())
            .args(["--spiffe-id", bad, "--out-cert"])
            .arg(&cert)
            .arg("--out-key")
            .arg(dir.path().join("bad-key.pem")));
        assert!(!out.status.success(), "{bad} was signed");
        assert!(!cert.exists(), "{bad}: a certificate was written");
    }
}

/// An operator's own RSA root, given as root-cert.pem + ca-key.pem only.
#[test]
fn existing_rsa_root_with_only_root_cert_and_key_is_used_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    rsa_root(
        &d.join("ca-key.pem"),
        &d.join("root-cert.pem"),
        "Operator Root",
    );
    let id = "spiffe://cluster.local/ns/shop/sa/payment";
    let (cert, key) = issue(d, id);
    let verify = ok(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(d.join("root-cert.pem"))
        .arg(&cert));
    assert!(verify.contains(": OK"), "{verify}");
    assert_leaf_shape(&cert, &key, id);
}

/// An intermediate signing CA (ECDSA) under an RSA root, with its chain.
#[test]
fn intermediate_with_chain_is_used_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let w = |name: &str| d.join(name);
    rsa_root(&w("root-key.pem"), &w("root-cert.pem"), "Root");
    ok(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(w("ca-key.pem")));
    ok(Command::new("openssl")
        .args(["req", "-new", "-key"])
        .arg(w("ca-key.pem"))
        .args(["-subj", "/O=cluster.local/CN=Intermediate", "-out"])
        .arg(w("ca.csr")));
    std::fs::write(
        w("ext.cnf"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    ok(Command::new("openssl")
        .args(["x509", "-req", "-in"])
        .arg(w("ca.csr"))
        .arg("-CA")
        .arg(w("root-cert.pem"))
        .arg("-CAkey")
        .arg(w("root-key.pem"))
        .args(["-CAcreateserial", "-days", "20", "-extfile"])
        .arg(w("ext.cnf"))
        .arg("-out")
        .arg(w("ca-cert.pem")));
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(w("ca-cert.pem")).unwrap(),
        std::fs::read_to_string(w("root-cert.pem")).unwrap()
    );
    std::fs::write(w("cert-chain.pem"), chain).unwrap();
    std::fs::remove_file(w("root-key.pem")).unwrap();

    let id = "spiffe://cluster.local/ns/shop/sa/inventory";
    let (cert, key) = issue(d, id);
    // The issued file carries the intermediate, so the root alone is enough to verify.
    let verify = ok(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(w("root-cert.pem"))
        .arg("-untrusted")
        .arg(&cert)
        .arg(&cert));
    assert!(verify.contains(": OK"), "{verify}");
    assert_leaf_shape(&cert, &key, id);
}

#[test]
fn mismatched_key_and_cert_are_rejected_naming_the_file() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    ok(Command::new(WEFT)
        .args(["ca", "init", "--dir"])
        .arg(a.path()));
    ok(Command::new(WEFT)
        .args(["ca", "init", "--dir"])
        .arg(b.path()));
    std::fs::copy(b.path().join("ca-key.pem"), a.path().join("ca-key.pem")).unwrap();
    let out = run(Command::new(WEFT)
        .args(["ca", "issue", "--dir"])
        .arg(a.path())
        .args([
            "--spiffe-id",
            "spiffe://cluster.local/ns/a/sa/b",
            "--out-cert",
            "/dev/null",
            "--out-key",
            "/dev/null",
        ]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ca-cert.pem") && stderr.contains("does not match"),
        "{stderr}"
    );
}
