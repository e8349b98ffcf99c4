//! `stsgate demo`: the zero-setup start. A loopback demo STS that answers
//! like ADFS (an RSTR for password `demo`, the failed-authentication fault
//! otherwise), the gate in front of it with the embedded
//! `rules/example.toml`, and the admin listener. Everything it writes goes
//! to one directory, printed at start, so the rules can be edited live.

use std::io::Read;
use std::net::SocketAddr;
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
    /// directory under the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn demo(args: Args) -> Result<()> {
    crate::init_tracing();
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("stsgate-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(dir.join("rules/feeds"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
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
                print_welcome(&dir, &config_path, listen, admin, sts_addr, &token)
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
    write("admin.token", &format!("{token}\n"))?;
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

fn print_welcome(
    dir: &Path,
    config: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    sts: SocketAddr,
    token: &str,
) {
    let url = format!("http://{listen}/adfs/services/trust/2005/usernamemixed");
    let d = dir.display();
    let post = format!("curl -si {url} -H 'Content-Type: application/soap+xml; charset=utf-8'");
    println!(
        r#"
stsgate demo is running.

  gate      http://{listen}   (rules: {d}/rules/example.toml, reloaded on save)
  demo STS  http://{sts}   (answers like ADFS; the password "demo" signs in)
  admin     http://{admin}/metrics  /healthz  /readyz  /api/v1/reload
  files     {d}

Try:

  # forwarded: an ActiveSync sign-in with the right password (200 and a token)
  {post} -H 'X-MS-Client-Application: Microsoft.Exchange.ActiveSync' --data-binary @{d}/rst-good.xml

  # forwarded: the wrong password (500, FailedAuthentication, from the STS)
  {post} -H 'X-MS-Client-Application: Microsoft.Exchange.ActiveSync' --data-binary @{d}/rst-wrong.xml

  # refused: a client in 5.143.*.* (the same 500 fault, but the STS never sees it)
  {post} -H 'X-MS-Client-Application: Microsoft.Exchange.ActiveSync' -H 'X-MS-Forwarded-Client-IP: 5.143.7.7' --data-binary @{d}/rst-good.xml

  # refused: a spray tool's user agent
  {post} -H 'X-MS-Client-Application: Microsoft.Exchange.ActiveSync' -H 'X-MS-Client-User-Agent: python-requests/2.32' --data-binary @{d}/rst-good.xml

  # refused: the windowstransport endpoint is never reachable
  curl -si http://{listen}/adfs/services/trust/13/windowstransport -X POST

  # why? the same decision offline, stage by stage
  stsgate explain --config {config} --peer 127.0.0.1 --ip 5.143.7.7 -H 'X-MS-Client-Application: Microsoft.Exchange.ActiveSync'

  # what happened so far
  curl -s http://{admin}/metrics | grep stsgate_decisions_total

  # reload the rules through the API
  curl -si -X POST -H 'Authorization: Bearer {token}' http://{admin}/api/v1/reload

The decision log follows, one line per request. Ctrl-C stops the demo.
"#,
        config = config.display(),
    );
}
