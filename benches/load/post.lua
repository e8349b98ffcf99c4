-- wrk script: an Exchange Online style WS-Trust sign-in that every rule set forwards.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/soap+xml; charset=utf-8"
wrk.headers["X-MS-Client-Application"] = "Microsoft.Exchange.ActiveSync"
wrk.headers["X-MS-Client-User-Agent"] = "Apple-iPhone3C1/811.2"
local f = io.open(os.getenv("RST_FILE"), "rb")
wrk.body = f:read("*a")
f:close()
