//! `stsgate demo`: the zero-setup start. A loopback demo STS that answers
//! like ADFS (an RSTR for password `demo`, the failed-authentication fault
//! otherwise), the gate in front of it with the embedded
//! `rules/example.toml`, and the admin listener. Everything it writes goes
//! to one directory, printed at start, so the rules can be edited live. A
//! directory the demo made itself (no `--dir`) is removed when it stops.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use stsgate_proxy::Config;

const EXAMPLE_RULES: &str = include_str!("../../../rules/example.toml");
const EXAMPLE_FEED: &str = include_str!("../../../rules/feeds/example-drop.txt");

/// `stsgate demo` arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Where the gate listens (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the admin listener listens.
    #[arg(long, default_value = "127.0.0.1:9100")]
    admin: SocketAddr,
    /// Directory for the demo's config, rules and samples (default: a new
    /// directory under the system's temporary directory, removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// A directory the demo made: removed when the demo ends (Ctrl-C, SIGTERM,
/// or an error), whatever the way out.
struct OwnDir(PathBuf);

impl Drop for OwnDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("stsgate: cannot remove {}: {e}", self.0.display());
        }
    }
}

pub fn demo(args: Args) -> Result<()> {
    crate::init_tracing();
    let (dir, _own) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => {
            // A fresh, private directory with an unguessable name.
            let dir = std::env::temp_dir().join(format!("stsgate-demo-{}", &random_token()?[..12]));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            (dir.clone(), Some(OwnDir(dir)))
        }
    };
    std::fs::create_dir_all(dir.join("rules/feeds"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let removed_on_exit = _own.is_some();
    let runtime = crate::runtime()?;
    runtime.block_on(async move {
        let sts = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the demo STS")?;
        let sts_addr = sts.local_addr()?;
        let (stop_sts, sts_stopped) = tokio::sync::oneshot::channel::<()>();
        let sts_task = tokio::spawn(crate::demo_sts::serve(sts, async {
            let _ = sts_stopped.await;
        }));
        let token = random_token()?;
        let config_path = write_files(&dir, &args, sts_addr, &token)?;
        let config = Config::load(&config_path).map_err(|e| {
            anyhow::anyhow!(
                "{}",
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
        let listen = args.listen;
        let admin = args.admin;
        let result = crate::serve(
            config,
            Some(Box::new(move |_: &Config| {
                print_welcome(&Welcome {
                    dir: &dir,
                    config: &config_path,
                    listen,
                    admin,
                    sts: sts_addr,
                    token: &token,
                    removed_on_exit,
                })
            })),
        )
        .await;
        let _ = stop_sts.send(());
        let _ = sts_task.await;
        result
    })
}

fn write_files(dir: &Path, args: &Args, sts: SocketAddr, token: &str) -> Result<PathBuf> {
    let write = |name: &str, text: &str| -> Result<()> {
        std::fs::write(dir.join(name), text)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))
    };
    write("rules/example.toml", EXAMPLE_RULES)?;
    write("rules/feeds/example-drop.txt", EXAMPLE_FEED)?;
    // The token is a credential: readable by its owner only.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("admin.token"))
        .and_then(|mut f| {
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            f.write_all(format!("{token}\n").as_bytes())
        })
        .with_context(|| format!("cannot write {}", dir.join("admin.token").display()))?;
    write("rst-good.xml", &sample_rst("alice@contoso.com", "demo"))?;
    write(
        "rst-wrong.xml",
        &sample_rst("alice@contoso.com", "Winter2026!"),
    )?;
    let config = format!(
        r#"# stsgate demo config, written by `stsgate demo`.
rules = "rules/example.toml"

[listen]
addr = "{listen}"

[upstream]
url = "http://{sts}"
connect_timeout = "2s"
timeout = "10s"

[client_ip]
# curl on this machine plays Exchange Online: its forwarded headers are believed.
trusted_proxies = ["127.0.0.0/8", "::1"]

[admin]
addr = "{admin}"
token_file = "admin.token"

[state]
dir = "state"

[log]
format = "text"
"#,
        listen = args.listen,
        admin = args.admin,
    );
    write("stsgate.toml", &config)?;
    Ok(dir.join("stsgate.toml"))
}

/// A WS-Trust 2005 RST as Exchange Online posts it.
fn sample_rst(user: &str, password: &str) -> String {
    format!(
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://www.w3.org/2005/08/addressing">
  <s:Header>
    <a:Action s:mustUnderstand="1">http://schemas.xmlsoap.org/ws/2005/02/trust/RST/Issue</a:Action>
    <a:To s:mustUnderstand="1">https://sts.contoso.com/adfs/services/trust/2005/usernamemixed</a:To>
    <o:Security s:mustUnderstand="1" xmlns:o="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">
      <o:UsernameToken><o:Username>{user}</o:Username><o:Password>{password}</o:Password></o:UsernameToken>
    </o:Security>
  </s:Header>
  <s:Body>
    <t:RequestSecurityToken xmlns:t="http://schemas.xmlsoap.org/ws/2005/02/trust">
      <wsp:AppliesTo xmlns:wsp="http://schemas.xmlsoap.org/ws/2004/09/policy"><a:EndpointReference><a:Address>urn:federation:MicrosoftOnline</a:Address></a:EndpointReference></wsp:AppliesTo>
      <t:RequestType>http://schemas.xmlsoap.org/ws/2005/02/trust/Issue</t:RequestType>
    </t:RequestSecurityToken>
  </s:Body>
</s:Envelope>
"#
    )
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the welcome names.
struct Welcome<'a> {
    dir: &'a Path,
    config: &'a Path,
    listen: SocketAddr,
    admin: SocketAddr,
    sts: SocketAddr,
    token: &'a str,
    removed_on_exit: bool,
}

/// `s` as one shell word: as is when it is plain, else in single quotes.
fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@=,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Prints the URLs and commands that run as printed: the binary by its
/// absolute path, paths quoted for the shell.
fn print_welcome(w: &Welcome<'_>) {
    let Welcome {
        listen,
        admin,
        sts,
        token,
        ..
    } = *w;
    let url = format!("http://{listen}/adfs/services/trust/2005/usernamemixed");
    let d = w.dir.display();
    let file = |name: &str| sh(&w.dir.join(name).display().to_string());
    let (good, wrong) = (file("rst-good.xml"), file("rst-wrong.xml"));
    let bin = std::env::current_exe()
        .map(|p| sh(&p.display().to_string()))
        .unwrap_or_else(|_| "stsgate".to_string());
    let config = sh(&w.config.display().to_string());
    let post = format!("curl -si {url} -H 'Content-Type: application/soap+xml; charset=utf-8'");
    let stop = if w.removed_on_exit {
        format!("Ctrl-C stops the demo and removes {d}.")
    } else {
        "Ctrl-C stops the demo.".to_string()
    };
    println!(
        r#"
stsgate demo is running.

  gate      http://{listen}   (rules: {d}/rules/example.toml, reloaded on save)
  demo STS  http://{sts}   (answers like ADFS; the password "demo" signs in)
  admin     http://{admin}/metrics  /healthz  /readyz  /api/v1/{{reload,blocks,lockouts,explain}}
  page      http://{admin}/ui   (the admin page; its token is the first line of {d}/admin.token)
  files     {d}

Try:

  # forwarded: an ActiveSync sign-in with the right password (200 and a token)
  {post} -H 'X-MS-Client-Application: Microsoft.Exchange.ActiveSync' --data-binary @{good}

  # forwarded: the wrong password (500, FailedAuthentication, from the STS)
  {post} -H 'X-MS-Client-Application: Microsoft.Exchange.ActiveSync' --data-binary @{wrong}

  # refused: a client in 5.143.*.* (the same 500 fault, but the STS never sees it)
  {post} -H 'X-MS-Client-Application: Microsoft.Exchange.ActiveSync' -H 'X-MS-Forwarded-Client-IP: 5.143.7.7' --data-binary @{good}

  # refused: a spray tool's user agent
  {post} -H 'X-MS-Client-Application: Microsoft.Exchange.ActiveSync' -H 'X-MS-Client-User-Agent: python-requests/2.32' --data-binary @{good}

  # refused: the windowstransport endpoint is never reachable
  curl -si http://{listen}/adfs/services/trust/13/windowstransport -X POST

  # forwarded without a decision: metadata exchange carries no credential
  curl -si http://{listen}/adfs/services/trust/mex

  # block a client IP for 4 hours through the API (what a SOAR playbook does)
  curl -si -X POST -H 'Authorization: Bearer {token}' http://{admin}/api/v1/blocks -d '{{"ip": "203.0.113.7", "ttl": "4h", "reason": "demo"}}'

  # refused: that client now, in stage 2 (dynamic_block), whatever the rules say
  {post} -H 'X-MS-Client-Application: Microsoft.Exchange.ActiveSync' -H 'X-MS-Forwarded-Client-IP: 203.0.113.7' --data-binary @{good}

  # the live blocks and locked users, from the shell
  {bin} block list --config {config}
  {bin} lockout list --config {config}

  # why? the same decision, stage by stage (asks the running gate for its live state)
  {bin} explain --config {config} --peer 127.0.0.1 --ip 5.143.7.7 -H 'X-MS-Client-Application: Microsoft.Exchange.ActiveSync'

  # what happened so far
  curl -s http://{admin}/metrics | grep stsgate_decisions_total

  # reload the rules through the API
  curl -si -X POST -H 'Authorization: Bearer {token}' http://{admin}/api/v1/reload

The decision log follows, one line per request. {stop}
"#
    );
}
