//! A real OpenLDAP `slapd` on a free loopback port, for the directory
//! tests (Debian packages `slapd` and `ldap-utils`; scripts/test.sh
//! installs them): a temporary `slapd.conf` and mdb database, the
//! `memberof` overlay (users and groups get `memberOf` as members are
//! added) and `refint`. Loaded with [`DIRECTORY`]: users, groups, a group
//! in a group, a cycle. Users are found by `mail` (standing for the UPN)
//! or `uid` (the sAMAccountName): see [`USER_FILTER`].
//!
//! Uses only std and tempfile, so that the directory crate's own tests
//! can include this file too (`#[path]`).

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory's suffix (base DN).
pub const BASE_DN: &str = "dc=corp,dc=example,dc=com";
/// The service account stsgate binds as.
pub const BIND_DN: &str = "cn=svc-stsgate,ou=Service,dc=corp,dc=example,dc=com";
/// Its password.
pub const BIND_PASSWORD: &str = "svc secret";
/// The filter that finds users here (`mail` for UPNs, `uid` for sams).
pub const USER_FILTER: &str = "(|(mail={user})(uid={user}))";
/// Group DNs, as the directory writes them.
pub const LEGACY: &str = "cn=Legacy-Auth-Allowed,ou=Groups,dc=corp,dc=example,dc=com";
/// `bob`'s group; a member of [`LEGACY`].
pub const TEAM: &str = "cn=Team,ou=Groups,dc=corp,dc=example,dc=com";
/// A group whose member is the group [`LEGACY`].
pub const STAFF: &str = "cn=Staff,ou=Groups,dc=corp,dc=example,dc=com";
/// Two groups members of each other (a cycle the walk must survive).
pub const CYCLE_A: &str = "cn=Cycle-A,ou=Groups,dc=corp,dc=example,dc=com";
/// See [`CYCLE_A`].
pub const CYCLE_B: &str = "cn=Cycle-B,ou=Groups,dc=corp,dc=example,dc=com";

const ROOT_DN: &str = "cn=admin,dc=corp,dc=example,dc=com";
const ROOT_PW: &str = "root secret";

/// The test directory:
/// - `alice` (alice@corp.example.com): in `Legacy-Auth-Allowed` directly,
///   in `Staff` through it;
/// - `bob` (bob@corp.example.com): in `Team` directly, in
///   `Legacy-Auth-Allowed` through `Team`, in `Staff` through both;
/// - `carol`: in no group;
/// - `dave`: in `Cycle-A`, and `Cycle-A` ⊂ `Cycle-B` ⊂ `Cycle-A`.
pub const DIRECTORY: &str = "\
dn: dc=corp,dc=example,dc=com
objectClass: dcObject
objectClass: organization
o: corp
dc: corp

dn: ou=People,dc=corp,dc=example,dc=com
objectClass: organizationalUnit
ou: People

dn: ou=Groups,dc=corp,dc=example,dc=com
objectClass: organizationalUnit
ou: Groups

dn: ou=Service,dc=corp,dc=example,dc=com
objectClass: organizationalUnit
ou: Service

dn: cn=svc-stsgate,ou=Service,dc=corp,dc=example,dc=com
objectClass: inetOrgPerson
cn: svc-stsgate
sn: service
userPassword: svc secret

dn: uid=alice,ou=People,dc=corp,dc=example,dc=com
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: A
mail: alice@corp.example.com

dn: uid=bob,ou=People,dc=corp,dc=example,dc=com
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: B
mail: bob@corp.example.com

dn: uid=carol,ou=People,dc=corp,dc=example,dc=com
objectClass: inetOrgPerson
uid: carol
cn: Carol
sn: C
mail: carol@corp.example.com

dn: uid=dave,ou=People,dc=corp,dc=example,dc=com
objectClass: inetOrgPerson
uid: dave
cn: Dave
sn: D
mail: dave@corp.example.com

dn: cn=Team,ou=Groups,dc=corp,dc=example,dc=com
objectClass: groupOfNames
cn: Team
member: uid=bob,ou=People,dc=corp,dc=example,dc=com

dn: cn=Legacy-Auth-Allowed,ou=Groups,dc=corp,dc=example,dc=com
objectClass: groupOfNames
cn: Legacy-Auth-Allowed
member: uid=alice,ou=People,dc=corp,dc=example,dc=com
member: cn=Team,ou=Groups,dc=corp,dc=example,dc=com

dn: cn=Staff,ou=Groups,dc=corp,dc=example,dc=com
objectClass: groupOfNames
cn: Staff
member: cn=Legacy-Auth-Allowed,ou=Groups,dc=corp,dc=example,dc=com

dn: cn=Cycle-A,ou=Groups,dc=corp,dc=example,dc=com
objectClass: groupOfNames
cn: Cycle-A
member: uid=dave,ou=People,dc=corp,dc=example,dc=com

dn: cn=Cycle-B,ou=Groups,dc=corp,dc=example,dc=com
objectClass: groupOfNames
cn: Cycle-B
member: cn=Cycle-A,ou=Groups,dc=corp,dc=example,dc=com

dn: cn=Cycle-A,ou=Groups,dc=corp,dc=example,dc=com
changetype: modify
add: member
member: cn=Cycle-B,ou=Groups,dc=corp,dc=example,dc=com
";

/// A running slapd.
pub struct Slapd {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// The `ldaps://` port, when started with TLS.
    pub tls_port: Option<u16>,
    dir: tempfile::TempDir,
    paused: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Slapd {
    /// Starts slapd on a free port with [`DIRECTORY`] loaded.
    pub fn start() -> Slapd {
        Slapd::start_with(None)
    }

    /// [`Slapd::start`], also listening for `ldaps://` on another port
    /// with this certificate chain and key (PEM).
    pub fn start_tls(chain_pem: &str, key_pem: &str) -> Slapd {
        Slapd::start_with(Some((chain_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Slapd {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let tls_conf = match tls {
            Some((chain, key)) => {
                std::fs::write(dir.path().join("tls-chain.pem"), chain).unwrap();
                std::fs::write(dir.path().join("tls-key.pem"), key).unwrap();
                format!(
                    "TLSCertificateFile {d}/tls-chain.pem\nTLSCertificateKeyFile {d}/tls-key.pem\n",
                    d = dir.path().display()
                )
            }
            None => String::new(),
        };
        std::fs::create_dir(dir.path().join("db")).unwrap();
        let conf = format!(
            "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
{tls_conf}modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
moduleload refint
pidfile {dir}/slapd.pid
database mdb
suffix \"{BASE_DN}\"
rootdn \"{ROOT_DN}\"
rootpw \"{ROOT_PW}\"
directory {dir}/db
maxsize 10485760
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint true
overlay refint
refint_attributes member memberOf
",
            dir = dir.path().display()
        );
        std::fs::write(dir.path().join("slapd.conf"), conf).unwrap();
        let mut slapd = Slapd {
            child: None,
            port,
            tls_port: tls.map(|_| free_port()),
            dir,
            paused: false,
        };
        slapd.restart();
        slapd.modify(DIRECTORY);
        slapd
    }

    /// slapd's `-h`: `ldap://`, and `ldaps://` with TLS.
    fn listen(&self) -> String {
        let mut urls = format!("ldap://127.0.0.1:{}/", self.port);
        if let Some(tls) = self.tls_port {
            urls.push_str(&format!(" ldaps://127.0.0.1:{tls}/"));
        }
        urls
    }

    /// `ldaps://127.0.0.1:PORT` (started with [`Slapd::start_tls`]).
    pub fn ldaps_url(&self) -> String {
        format!(
            "ldaps://127.0.0.1:{}",
            self.tls_port.expect("started with TLS")
        )
    }

    /// `ldap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// A file holding the service account's password, in the slapd's
    /// temporary directory.
    pub fn password_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("bind.secret");
        std::fs::write(&path, format!("{BIND_PASSWORD}\n")).unwrap();
        path
    }

    /// Starts it (again, on the same port, with the same database).
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        // /usr/sbin may not be on a user's PATH.
        let program = if std::path::Path::new("/usr/sbin/slapd").exists() {
            "/usr/sbin/slapd"
        } else {
            "slapd"
        };
        let child = Command::new(program)
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .args(["-h", &self.listen()])
            // In the foreground (a child the test owns), quiet.
            .args(["-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("slapd not found: install the Debian packages slapd and ldap-utils (scripts/test.sh does)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "slapd did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it (its database is kept for [`Slapd::restart`]).
    pub fn stop(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections are accepted by the kernel, nothing answers.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    /// Undoes [`Slapd::pause`].
    pub fn resume(&mut self) {
        if self.paused {
            self.signal("-CONT");
            self.paused = false;
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("slapd runs").id().to_string();
        let status = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    }

    /// Applies LDIF (entries to add, or `changetype:` records) as the root DN.
    pub fn modify(&self, ldif: &str) {
        let mut child = Command::new("ldapmodify")
            .args(["-x", "-a", "-H", &self.url(), "-D", ROOT_DN, "-w", ROOT_PW])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ldapmodify not found: install the Debian package ldap-utils");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ldapmodify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Does it accept connections?
    pub fn answers(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
