//! Debian's slapd as a throw-away directory: run as the current user from a temporary
//! folder (slapd.conf, an mdb database loaded with slapadd, a test CA and server
//! certificate for ldaps and StartTLS, the memberof overlay), on free loopback ports,
//! logging every operation (`-d stats`) to a file the tests read, stopped by its PID.

use super::common::process::{ok, run};
use super::common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SUFFIX: &str = "dc=example,dc=org";
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
pub const ADMIN_PW: &str = "admin-Pw-7";
/// The proxy's service account and its password (which must never be seen in a log).
pub const SERVICE_DN: &str = "cn=registry-guard,ou=services,dc=example,dc=org";
pub const SERVICE_PW: &str = "svc-S3cret-never-logged";

/// People in the directory: (uid, password, groups). `dup` exists twice (ou=people and
/// ou=contractors); `carol` is also in the proxy's user file in the tests.
pub const PEOPLE: &[(&str, &str, &[&str])] = &[
    ("alice", "alice-Dir-pw", &["team-a", "developers"]),
    ("bob", "bob-Dir-pw", &["developers"]),
    ("carol", "carol-Dir-pw", &["team-a"]),
    ("dana", "dana-Dir-pw", &["team-a"]),
];

pub struct Slapd {
    pub dir: tempfile::TempDir,
    pub ldap: SocketAddr,
    pub ldaps: SocketAddr,
    pub ca: PathBuf,
    child: Option<Child>,
}

fn person(uid: &str, ou: &str, pw: &str) -> String {
    format!(
        "dn: uid={uid},ou={ou},{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {pw}\n\n"
    )
}

impl Slapd {
    /// None when slapd is missing and not required.
    pub fn start() -> Option<Slapd> {
        if !Path::new("/usr/sbin/slapd").exists() {
            assert!(
                !required(),
                "slapd is required (RG_REQUIRE_REAL/CI) but not installed: run scripts/install-deps"
            );
            eprintln!("SKIPPING: slapd is not installed (set RG_REQUIRE_REAL=1 to fail instead)");
            return None;
        }
        if !have("ldapmodify") {
            return None;
        }
        assert!(
            Path::new("/usr/lib/ldap/memberof.so").exists(),
            "Debian's slapd ships the memberof overlay as /usr/lib/ldap/memberof.so"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = Self::pki(d);
        std::fs::create_dir(d.join("db")).unwrap();
        std::fs::write(
            d.join("slapd.conf"),
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/nis.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 moduleload memberof\n\
                 pidfile {d}/slapd.pid\n\
                 argsfile {d}/slapd.args\n\
                 TLSCertificateFile {d}/server.pem\n\
                 TLSCertificateKeyFile {d}/server.key\n\
                 database mdb\n\
                 maxsize 10485760\n\
                 suffix \"{SUFFIX}\"\n\
                 rootdn \"{ADMIN_DN}\"\n\
                 rootpw {ADMIN_PW}\n\
                 directory {d}/db\n\
                 overlay memberof\n\
                 access to attrs=userPassword by anonymous auth by * none\n\
                 access to * by users read by * none\n",
                d = d.display()
            ),
        )
        .unwrap();
        let mut ldif = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n"
        );
        for ou in ["people", "contractors", "groups", "services"] {
            ldif.push_str(&format!(
                "dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}\n\n"
            ));
        }
        ldif.push_str(&format!(
            "dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: registry-guard\nuserPassword: {SERVICE_PW}\n\n"
        ));
        for (uid, pw, _) in PEOPLE {
            ldif.push_str(&person(uid, "people", pw));
        }
        ldif.push_str(&person("dup", "people", "dup-pw"));
        ldif.push_str(&person("dup", "contractors", "dup-pw"));
        std::fs::write(d.join("data.ldif"), ldif).unwrap();
        ok(
            &run(
                Command::new("/usr/sbin/slapadd")
                    .arg("-f")
                    .arg(d.join("slapd.conf"))
                    .arg("-l")
                    .arg(d.join("data.ldif")),
                Duration::from_secs(60),
            ),
            "slapadd",
        );
        let mut s = Slapd {
            dir,
            ldap: "127.0.0.1:9".parse().unwrap(),
            ldaps: "127.0.0.1:9".parse().unwrap(),
            ca,
            child: None,
        };
        s.serve();
        // Groups are added through slapd, so the memberof overlay writes memberOf
        // (slapadd bypasses overlays).
        let mut groups = String::new();
        for g in ["team-a", "developers"] {
            groups.push_str(&format!(
                "dn: cn={g},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {g}\n"
            ));
            for (uid, _, gs) in PEOPLE {
                if gs.contains(&g) {
                    groups.push_str(&format!("member: uid={uid},ou=people,{SUFFIX}\n"));
                }
            }
            groups.push('\n');
        }
        s.modify("ldapadd", &groups);
        Some(s)
    }

    /// A test CA (written to ca.pem) and a server certificate for 127.0.0.1.
    fn pki(d: &Path) -> PathBuf {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name
            .push(DnType::CommonName, "ldap test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut p =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(d.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(d.join("server.key"), key.serialize_pem()).unwrap();
        let path = d.join("ca.pem");
        std::fs::write(&path, ca_cert.pem()).unwrap();
        path
    }

    /// Starts slapd on two free ports (ldap:// and ldaps://), retrying on a port race.
    fn serve(&mut self) {
        let d = self.dir.path().to_owned();
        for _ in 0..5 {
            let (p1, p2) = (free_port(), free_port());
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(d.join("slapd.log"))
                .unwrap();
            let mut child = Command::new("/usr/sbin/slapd")
                .arg("-f")
                .arg(d.join("slapd.conf"))
                .arg("-h")
                .arg(format!("ldap://127.0.0.1:{p1}/ ldaps://127.0.0.1:{p2}/"))
                .args(["-d", "stats"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start slapd");
            let (ldap, ldaps): (SocketAddr, SocketAddr) = (
                format!("127.0.0.1:{p1}").parse().unwrap(),
                format!("127.0.0.1:{p2}").parse().unwrap(),
            );
            let up = wait_for(Duration::from_secs(15), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                (std::net::TcpStream::connect(ldap).is_ok()
                    && std::net::TcpStream::connect(ldaps).is_ok())
                .then_some(true)
            });
            if up == Some(true) {
                self.ldap = ldap;
                self.ldaps = ldaps;
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "slapd did not start on free ports in 5 tries:\n{}",
            self.log()
        );
    }

    /// Stops slapd (SIGTERM by its PID, then SIGKILL), as a directory outage.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let gone = wait_for(Duration::from_secs(10), || {
                c.try_wait().ok().flatten().map(|_| ())
            });
            if gone.is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// `ldapadd` or `ldapmodify` as the directory's admin, with `ldif` on stdin.
    pub fn modify(&self, tool: &str, ldif: &str) {
        let file = self.dir.path().join("change.ldif");
        std::fs::write(&file, ldif).unwrap();
        ok(
            &run(
                Command::new(tool)
                    .args(["-x", "-H"])
                    .arg(format!("ldap://{}", self.ldap))
                    .args(["-D", ADMIN_DN, "-w", ADMIN_PW, "-f"])
                    .arg(&file),
                Duration::from_secs(30),
            ),
            tool,
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// Lines of the log that mention `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// `auth.ldap` for the proxy (indented under `auth:`), over ldaps with the test CA,
    /// the service password from `LDAP_SVC_PW`; `extra`: further keys (4 spaces).
    pub fn auth_yaml(&self, extra: &str) -> String {
        format!(
            "  ldap:\n    url: ldaps://{}\n    ca_file: {}\n    bind_dn: {SERVICE_DN}\n    bind_password_env: LDAP_SVC_PW\n    user_base: {SUFFIX}\n    user_filter: '(&(objectClass=inetOrgPerson)(uid={{user}}))'\n    timeout: 2s\n    connect_timeout: 2s\n{extra}",
            self.ldaps,
            self.ca.display()
        )
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
