#!/usr/bin/env python3
"""Writes the same rule lists for stsgate and nginx, for the load comparison.

usage: gen.py OUTDIR IP_ENTRIES HEADER_ENTRIES
  OUTDIR/rules-ip.toml, OUTDIR/rules-full.toml      stsgate rule files
  OUTDIR/geo.conf, OUTDIR/maps.conf                 nginx `geo` and `map` blocks
Deterministic: the same arguments give the same files.
"""
import random
import sys

out, n_ip, n_hdr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(20261123)

ips, seen = [], set()
while len(ips) < n_ip:
    a = rnd.choice([5, 31, 45, 77, 91, 103, 141, 185, 193, 212])
    b, c, d = rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)
    ip = f"{a}.{b}.{c}.0/24" if len(ips) % 4 == 0 else f"{a}.{b}.{c}.{d}/32"
    if ip not in seen:  # nginx's geo warns about duplicates
        seen.add(ip)
        ips.append(ip)

def words(prefix):
    return [f"{prefix}-{rnd.randrange(16**8):08x}" for _ in range(n_hdr)]

apps = words("Contoso.App")
apps[len(apps) // 2] = "Microsoft.Exchange.ActiveSync"
agents = words("sprayer")
agents[0] = "python-requests"

def toml_list(items):
    return "[\n" + "".join(f'  "{x}",\n' for x in items) + "]\n"

ip_section = '[request_blocking]\nlogic = "or"\n[request_blocking.ip]\nrule = "deny"\nentries = ' + toml_list(ips)
with open(f"{out}/rules-ip.toml", "w") as f:
    f.write(ip_section)
with open(f"{out}/rules-full.toml", "w") as f:
    f.write(ip_section)
    f.write('[request_blocking.application]\nrule = "allow"\nentries = ' + toml_list(apps))
    f.write('[request_blocking.user_agent]\nrule = "deny"\nentries = ' + toml_list(agents))

with open(f"{out}/geo.conf", "w") as f:
    f.write("geo $ip_blocked {\n  default 0;\n")
    f.writelines(f"  {ip} 1;\n" for ip in ips)
    f.write("}\n")

def rx(s):
    return "".join("\\" + ch if ch in ".+*?()[]{}|^$\\" else ch for ch in s)

with open(f"{out}/maps.conf", "w") as f:
    f.write("map $http_x_ms_client_application $app_allowed {\n  default 0;\n")
    f.writelines(f'  "~*{rx(a)}" 1;\n' for a in apps)
    f.write("}\nmap $http_x_ms_client_user_agent $ua_blocked {\n  default 0;\n")
    f.writelines(f'  "~*{rx(a)}" 1;\n' for a in agents)
    f.write("}\n")
