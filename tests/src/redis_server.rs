//! A real `redis-server` on a free loopback port (the Debian package
//! `redis-server`; `scripts/test.sh` installs it), for the shared-state
//! tests of this crate and of `crates/stsgate-state` (which includes this
//! file by path).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on loopback, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again, on the same port, empty).
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install the Debian package redis-server (scripts/test.sh does)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Everything stsgate keeps in it, as text (`redis-cli`): every key's
    /// name and value, and the lesson stream.
    pub fn dump(&self) -> String {
        let cli = |args: &[&str]| {
            let out = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "--raw"])
                .args(args)
                .output()
                .expect("redis-cli (Debian package redis-tools)");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let mut text = String::new();
        for key in cli(&["--scan"]).lines() {
            text.push_str(key);
            text.push('\n');
            if cli(&["TYPE", key]).trim() == "string" {
                text.push_str(&cli(&["GET", key]));
            }
        }
        text.push_str(&cli(&["XRANGE", "stsgate:lessons", "-", "+"]));
        text
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
