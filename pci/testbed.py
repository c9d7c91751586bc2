#!/usr/bin/env python3
"""carebill's segmented deployment on one Linux machine, and the proof of every flow.

Builds `pci/topology.toml` out of network namespaces: one namespace per host (billing, the card
vault, each database, the processor egress, "the internet"), one more, the *fabric*, holding a
bridge per network, and a veth pair from each host to each network it is attached to. The
fabric runs `pci/fabric.nft` (default deny, one allow rule per flow) over everything bridged.
No host has a default route, and nothing is ever attached to the machine's own network: all
traffic stays inside namespaces this script made.

It then starts the real things inside: a PostgreSQL cluster in each database namespace (a
throwaway `initdb` as user postgres, password auth, only the one client address allowed), the
vault (`tokenizer serve`, its KEK components made by `tokenizer keys init`), billing
(`carebill serve`, pointed at the vault over mutual TLS), a stand-in for the processor egress
proxy, and proves:

- each allowed flow connects;
- each refused flow is not answered at all (never a TCP reset: that would mean the packet
  reached a host), either because the source has no route (it shares no network with the
  target) or because the fabric dropped it (its `refused` counter moved). Refused flows are
  tried at ports that really listen, and also "as an attacker would": with a route added
  through a host that sits on both networks;
- a payment by card token works end to end across the segments (the browser tokenizes at the
  vault, billing charges the token through the vault).

It prints the flow matrix, tears everything down on exit (also on failure or Ctrl-C), and
removes what an interrupted earlier run left (namespaces named `cbpci-<pid>-…` of a dead pid).

Usage (as root): `pci/testbed.py --carebill BIN --tokenizer BIN [--logs DIR]`.
Exit status: 0 all flows as expected, 1 a flow is wrong or something failed, 77 skipped (not
root, or network namespaces, bridges or nftables are not available here; the reason is printed).
`tests/pci_segmentation.rs` runs it.
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = "cbpci"
SKIP = 77

# Billing's URL scheme on its edge listener: HTTPS only (CAREBILL_TLS_CERT/KEY in `billing_env`).
BILLING_SCHEME = "https"
PG_BIN = "/usr/lib/postgresql/15/bin"
# A dropped SYN is retried by the kernel after 1 s; waiting 1.5 s sees no answer for certain
# on a machine-local bridge, where an allowed connection answers in well under a millisecond.
CONNECT_TIMEOUT_S = 1.5
START_TIMEOUT_S = 60
# Processor egress stand-in: the allowed port, and one more that listens but must be refused.
PROCESSOR_OTHER_PORT = 8080
# An address outside every network of the topology (TEST-NET-3, RFC 5737): never routed.
OUTSIDE_ADDRESS = "203.0.113.10"
DB_USERS = {"billing-db": "carebill", "vault-db": "carebill_vault"}


def log(msg):
    print(f"[testbed] {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def ns_run(ns, cmd, check=True, **kw):
    return run(["ip", "netns", "exec", ns, *cmd], check=check, **kw)


# --- subcommands run inside a namespace ------------------------------------------------------


def probe(ip, port, timeout_s):
    """Opens one TCP connection; says how it went."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect((ip, port))
        return "connected"
    except ConnectionRefusedError:
        return "reset"
    except socket.timeout:
        return "no answer"
    except OSError as e:
        import errno

        if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "no route"
        return f"error {e.errno}"
    finally:
        s.close()


def listen(addresses):
    """Accepts and closes connections on each `ip:port` until killed (a listening stand-in)."""
    import selectors

    sel = selectors.DefaultSelector()
    for a in addresses:
        ip, port = a.rsplit(":", 1)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, int(port)))
        s.listen(16)
        sel.register(s, selectors.EVENT_READ)
    print("listening", flush=True)
    while True:
        for key, _ in sel.select():
            conn, _ = key.fileobj.accept()
            conn.close()


def e2e(billing_url, collect_url, ca, key_file):
    """The patient's browser and a billing clerk, from the internet side: tokenize a card at
    the vault, then bill and pay with the token at billing. Prints a JSON summary."""
    ctx = ssl.create_default_context(cafile=ca)
    with open(key_file) as f:
        api_key = f.read().strip()

    def call(method, url, body=None, headers=None, expect=(200, 201)):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=15) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        if status not in expect:
            # The error body names a code, never card data (the vault never echoes it).
            raise SystemExit(f"{method} {url.split('?')[0]}: {status} {text[:300]}")
        return json.loads(text) if text else {}

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            call("GET", f"{billing_url}/readyz")
            break
        except (SystemExit, OSError) as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"billing never became ready: {e}")
            time.sleep(0.3)
    auth = {"Authorization": f"Bearer {api_key}"}
    year = time.gmtime().tm_year + 3
    card = call(
        "POST",
        f"{collect_url}/v1/cards",
        {"number": "4242424242424242", "exp_month": 12, "exp_year": year, "cvc": "083"},
    )
    token = card["id"]
    patient = call(
        "POST",
        f"{billing_url}/v1/patients",
        {"name": "Segment Test", "date_of_birth": "1980-01-01", "email": "seg@example.org"},
        auth,
    )
    invoice = call(
        "POST",
        f"{billing_url}/v1/invoices",
        {
            "patient": patient["id"],
            "currency": "usd",
            "due_date": f"{year}-01-31",
            "lines": [
                {
                    "service_date": "2026-01-05",
                    "code": "99213",
                    "description": "Office visit",
                    "quantity": 1,
                    "unit_amount": 15000,
                }
            ],
        },
        auth,
    )
    call("POST", f"{billing_url}/v1/invoices/{invoice['id']}/finalize", {}, auth)
    payment = call(
        "POST",
        f"{billing_url}/v1/payments",
        {"invoice": invoice["id"], "amount": 15000, "currency": "usd", "payment_method": token},
        {**auth, "Idempotency-Key": str(uuid.uuid4())},
    )
    summary = {
        "token_shape": token[:4] + "…",
        "payment_status": payment.get("status"),
        "payment_method_is_token": payment.get("payment_method") == token,
        "card": payment.get("card"),
    }
    print(json.dumps(summary))


# --- the testbed -----------------------------------------------------------------------------


class Testbed:
    def __init__(self, args):
        self.args = args
        with open(os.path.join(HERE, "topology.toml"), "rb") as f:
            self.topo = tomllib.load(f)
        self.tag = f"{PREFIX}-{os.getpid()}"
        self.fabric = f"{self.tag}-fabric"
        self.procs = []  # (name, Popen, log path)
        self.namespaces = []
        self.work = None
        self.networks = {
            n: v for n, v in self.topo["networks"].items() if not v.get("compose_only")
        }
        self.hosts = {n: v for n, v in self.topo["hosts"].items() if not v.get("compose_only")}

    # names and addresses
    def ns(self, host):
        return f"{self.tag}-{host}"

    def addr(self, host, network):
        return self.hosts[host]["addresses"][network]

    # -- build --
    def build_network(self):
        for host in self.hosts:
            self.add_ns(self.ns(host))
        self.add_ns(self.fabric)
        run(["ip", "-n", self.fabric, "link", "set", "lo", "up"])
        # Bridged IPv4 through the inet forward hook, with connection tracking (per namespace).
        ns_run(self.fabric, ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"])
        for net in self.networks.values():
            br = net["bridge"]
            run(["ip", "-n", self.fabric, "link", "add", br, "type", "bridge"])
            run(["ip", "-n", self.fabric, "link", "set", br, "up"])
        for host, h in self.hosts.items():
            ns = self.ns(host)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # No IPv6 (the rules are IPv4), no routing between a multi-homed host's networks.
            ns_run(ns, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            ns_run(ns, ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
            ns_run(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=0"])
            for network, ip in h["addresses"].items():
                if network not in self.networks:
                    continue
                br = self.networks[network]["bridge"]
                port = f"{host[:8]}-{br[3:]}"[:15]
                run(["ip", "-n", self.fabric, "link", "add", port, "type", "veth",
                     "peer", "name", network, "netns", ns])
                run(["ip", "-n", self.fabric, "link", "set", port, "master", br])
                run(["ip", "-n", self.fabric, "link", "set", port, "up"])
                prefix = self.networks[network]["subnet"].split("/")[1]
                run(["ip", "-n", ns, "addr", "add", f"{ip}/{prefix}", "dev", network])
                run(["ip", "-n", ns, "link", "set", network, "up"])
        ns_run(self.fabric, ["nft", "-f", os.path.join(HERE, "fabric.nft")])
        # Nothing may leave: no host has a default route.
        for host in self.hosts:
            out = run(["ip", "-n", self.ns(host), "route", "show", "default"]).stdout.strip()
            if out:
                raise RuntimeError(f"{host} has a default route ({out})")

    def add_ns(self, ns):
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)

    # -- processes --
    def start(self, name, ns, cmd, env=None, user=None, stdout_file=None):
        logpath = os.path.join(self.work, "logs", f"{name}.log")
        logf = open(logpath, "ab")
        full = ["ip", "netns", "exec", ns]
        if user:
            full += ["runuser", "-u", user, "--"]
        out = open(stdout_file, "ab") if stdout_file else logf
        p = subprocess.Popen(full + cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=logf, start_new_session=True)
        self.procs.append((name, p, logpath))
        return p

    def wait_for(self, what, check, proc=None):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if check():
                return
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not start; see its log in {self.work}/logs")

    def certs(self):
        d = os.path.join(self.work, "certs")
        os.makedirs(d)

        def openssl(*a):
            run(["openssl", *a], cwd=d)

        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=carebill testbed CA",
                "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")

        def leaf(name, usage, sans):
            with open(os.path.join(d, f"{name}.ext"), "w") as f:
                f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                        f"extendedKeyUsage={usage}\nsubjectAltName={','.join(sans)}\n"
                        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
            openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                    "-subj", f"/CN={sans[0].split(':', 1)[1]}")
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
                    "-extfile", f"{name}.ext")

        tok = self.hosts["tokenizer"]["addresses"]
        cb = self.hosts["carebill"]["addresses"]
        leaf("vault", "serverAuth", ["DNS:vault-internal", "DNS:tokenizer", f"IP:{tok['edge']}", f"IP:{tok['pci-link']}"])
        leaf("billing", "serverAuth", ["DNS:carebill", f"IP:{cb['edge']}"])
        # The identity the vault's allowlist names (devcerts::BILLING_CLIENT_NAME).
        leaf("billing-client", "clientAuth", ["DNS:carebill-billing"])
        os.remove(os.path.join(d, "ca.key"))  # nothing more to sign
        return d

    def database(self, host):
        """A throwaway PostgreSQL cluster in `host`'s namespace, listening on its one address,
        password auth for the one client the topology allows. Returns (url, pgpass file)."""
        user = DB_USERS[host]
        (network, ip), = self.hosts[host]["addresses"].items()
        clients = [f["from"] for f in self.topo["flow"] if f["to"] == host]
        data = os.path.join(self.work, host)
        os.makedirs(data)
        shutil.chown(data, "postgres", "postgres")
        os.chmod(data, 0o700)
        password = secrets.token_urlsafe(24)
        pwfile = os.path.join(self.work, f"{host}.pw")
        with open(pwfile, "w") as f:
            f.write(password)
        shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(pwfile, 0o600)
        pgdata = os.path.join(data, "pgdata")
        run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/initdb", "-D", pgdata, "-U", user,
             "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
             "--no-sync", "-E", "UTF8"])
        os.remove(pwfile)
        with open(os.path.join(pgdata, "pg_hba.conf"), "w") as f:
            f.write("# the socket (this namespace only), and the one client of the topology\n")
            f.write("local all all trust\n")
            for c in clients:
                f.write(f"host all {user} {self.addr(c, network)}/32 scram-sha-256\n")
        sock = data
        p = self.start(host, self.ns(host), [
            f"{PG_BIN}/postgres", "-D", pgdata, "-c", f"listen_addresses={ip}", "-c", "port=5432",
            "-c", f"unix_socket_directories={sock}", "-c", "fsync=off",
            "-c", "shared_buffers=16MB", "-c", "max_connections=40"], user="postgres")
        self.wait_for(host, lambda: ns_run(self.ns(host), [f"{PG_BIN}/pg_isready", "-q", "-h",
                                                            sock, "-p", "5432"],
                                           check=False).returncode == 0, p)
        run(["ip", "netns", "exec", self.ns(host), "runuser", "-u", "postgres", "--",
             f"{PG_BIN}/psql", "-qX", "-h", sock, "-U", user, "-d", "postgres",
             "-c", f"CREATE DATABASE {user}"])
        pgpass = os.path.join(self.work, f"{host}.pgpass")
        fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{ip}:5432:{user}:{user}:{password}\n")
        # The URL carries no password: the client reads it from PGPASSFILE, as in compose.
        return f"postgres://{user}@{ip}:5432/{user}", pgpass

    def start_all(self):
        self.work = tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/var/tmp")
        os.chmod(self.work, 0o755)
        os.makedirs(os.path.join(self.work, "logs"))
        certs = self.certs()
        c = lambda n: os.path.join(certs, n)  # noqa: E731
        billing_db, billing_pgpass = self.database("billing-db")
        vault_db, vault_pgpass = self.database("vault-db")
        tok = self.hosts["tokenizer"]["addresses"]
        cb = self.hosts["carebill"]["addresses"]
        base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.work}

        # The processor egress stand-in: its allowed port, and another that must stay refused.
        pe = self.addr("processor-egress", "pci-egress")
        proxy_port = next(f["port"] for f in self.topo["flow"] if f["to"] == "processor-egress")
        self.listener("processor-egress", [f"{pe}:{proxy_port}", f"{pe}:{PROCESSOR_OTHER_PORT}"])
        # Something listening on the internet side, for the vault to (fail to) reach.
        self.listener("internet", [f"{self.addr('internet', 'edge')}:443"])

        # The vault: keys (two custodians' components), then serve.
        keys = os.path.join(self.work, "vault-keys")
        vault_env = {**base_env, "TOKENIZER_DATABASE_URL": vault_db, "PGPASSFILE": vault_pgpass,
                     "TOKENIZER_LOG": "info"}
        ns_run(self.ns("tokenizer"), [self.args.tokenizer, "keys", "init", "--out-dir", keys],
               env=vault_env)
        components = ",".join(sorted(os.path.join(keys, f) for f in os.listdir(keys)
                                     if f.startswith("kek-component-")))
        ready = os.path.join(self.work, "logs", "tokenizer.stdout")
        p = self.start("tokenizer", self.ns("tokenizer"), [self.args.tokenizer, "serve"], env={
            **vault_env,
            "TOKENIZER_COLLECT_ADDR": f"{tok['edge']}:8444",
            "TOKENIZER_INTERNAL_ADDR": f"{tok['pci-link']}:8445",
            "TOKENIZER_TLS_CERT": c("vault.pem"),
            "TOKENIZER_TLS_KEY": c("vault.key"),
            "TOKENIZER_CLIENT_CA": c("ca.pem"),
            "TOKENIZER_CLIENT_ALLOWLIST": "carebill-billing",
            "TOKENIZER_KEY_COMPONENTS": components,
        }, stdout_file=ready)
        self.wait_for("the vault", lambda: os.path.exists(ready)
                      and "tokenizer listening" in open(ready).read(), p)

        # Billing's keyring (field encryption of health data): made by the real CLI, offline.
        keyring = os.path.join(self.work, "billing.keyring")
        run([self.args.carebill, "keys", "init", "--file", keyring])
        # Billing: all of its settings in one place.
        billing_env = {
            **base_env,
            "DATABASE_URL": billing_db,
            "PGPASSFILE": billing_pgpass,
            "CAREBILL_ADDR": f"{cb['edge']}:8443",
            "CAREBILL_TLS_CERT": c("billing.pem"),
            "CAREBILL_TLS_KEY": c("billing.key"),
            "CAREBILL_VAULT_URL": f"https://{tok['pci-link']}:8445",
            "CAREBILL_VAULT_CA": c("ca.pem"),
            "CAREBILL_VAULT_CLIENT_CERT": c("billing-client.pem"),
            "CAREBILL_VAULT_CLIENT_KEY": c("billing-client.key"),
            "CAREBILL_KEYRING_FILE": keyring,
            "RUST_LOG": "info",
        }
        out = ns_run(self.ns("carebill"), [self.args.carebill, "apikey", "create", "--role",
                                           "billing_manager"], env=billing_env).stdout
        key_file = os.path.join(self.work, "api-key")
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(out.strip().splitlines()[-1].strip())
        self.start("carebill", self.ns("carebill"), [self.args.carebill, "serve"],
                   env=billing_env)
        return c("ca.pem"), key_file

    def listener(self, host, addresses):
        ready = os.path.join(self.work, "logs", f"{host}-listener.stdout")
        p = self.start(f"{host}-listener", self.ns(host),
                       [sys.executable, os.path.abspath(__file__), "listen", *addresses],
                       stdout_file=ready)
        self.wait_for(f"the listener in {host}", lambda: os.path.exists(ready)
                      and "listening" in open(ready).read(), p)

    # -- proving --
    def refused_count(self):
        out = ns_run(self.fabric, ["nft", "-j", "list", "counter", "inet", "carebill_fabric",
                                   "refused"]).stdout
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return item["counter"]["packets"]
        raise RuntimeError("no refused counter in the fabric")

    def try_connect(self, src, ip, port, via=None):
        ns = self.ns(src)
        if via:
            run(["ip", "-n", ns, "route", "add", f"{ip}/32", "via", via])
        try:
            before = self.refused_count()
            out = ns_run(ns, [sys.executable, os.path.abspath(__file__), "probe", ip, str(port),
                              str(CONNECT_TIMEOUT_S)]).stdout.strip()
            return out, self.refused_count() - before
        finally:
            if via:
                run(["ip", "-n", ns, "route", "del", f"{ip}/32"], check=False)

    def listening(self, host, ip, port):
        """Whether the target really listens (asked from inside its own namespace)."""
        out = ns_run(self.ns(host), [sys.executable, os.path.abspath(__file__), "probe", ip,
                                     str(port), str(CONNECT_TIMEOUT_S)]).stdout.strip()
        return out == "connected"

    def checks(self):
        """(source, target host, target address, port, expected, via, why) for each probe."""
        a = self.addr
        out = []
        for f in self.topo["flow"]:
            out.append((f["from"], f["to"], a(f["to"], f["network"]), f["port"], "allowed", None,
                        f["what"]))
        refused = [
            # billing -> vault DB: no shared network; through the vault's link address either.
            ("carebill", "vault-db", a("vault-db", "pci"), 5432, None,
             "billing never reaches the vault's database"),
            ("carebill", "vault-db", a("vault-db", "pci"), 5432, a("tokenizer", "pci-link"),
             "… not even routed through the vault"),
            ("carebill", "tokenizer", a("tokenizer", "edge"), 8444, None,
             "billing never sees the card form's traffic"),
            # tokenizer -> billing DB, and nothing in pci reaches app or billing.
            ("tokenizer", "billing-db", a("billing-db", "app"), 5432, None,
             "the vault never reaches billing's database"),
            ("tokenizer", "billing-db", a("billing-db", "app"), 5432, a("carebill", "pci-link"),
             "… not even routed through billing"),
            ("tokenizer", "carebill", a("carebill", "edge"), 8443, None,
             "the vault opens no connection to billing"),
            ("vault-db", "billing-db", a("billing-db", "app"), 5432, a("tokenizer", "pci"),
             "nothing in pci reaches app"),
            # edge -> the vault's internal port, and the databases.
            ("internet", "tokenizer", a("tokenizer", "pci-link"), 8445, None,
             "the internet never reaches the vault's internal port"),
            ("internet", "tokenizer", a("tokenizer", "pci-link"), 8445, a("tokenizer", "edge"),
             "… not even routed through the vault's edge address"),
            ("internet", "billing-db", a("billing-db", "app"), 5432, a("carebill", "edge"),
             "the internet never reaches billing's database"),
            ("internet", "vault-db", a("vault-db", "pci"), 5432, a("tokenizer", "edge"),
             "the internet never reaches the vault's database"),
            # the vault's egress: the processor's address and port only.
            ("tokenizer", "processor-egress", a("processor-egress", "pci-egress"),
             PROCESSOR_OTHER_PORT, None, "the vault reaches the processor's port only"),
            ("tokenizer", "internet", a("internet", "edge"), 443, None,
             "the vault reaches nothing on the internet side"),
            ("tokenizer", "outside", OUTSIDE_ADDRESS, 443, None,
             "the vault has no route to any other address"),
            ("processor-egress", "tokenizer", a("tokenizer", "pci-link"), 8445,
             a("tokenizer", "pci-egress"), "the egress side never reaches into the vault"),
            ("processor-egress", "vault-db", a("vault-db", "pci"), 5432,
             a("tokenizer", "pci-egress"), "… nor the vault's database"),
            ("billing-db", "tokenizer", a("tokenizer", "pci-link"), 8445, a("carebill", "app"),
             "billing's database never reaches the vault"),
        ]
        for src, dst, ip, port, via, why in refused:
            out.append((src, dst, ip, port, "refused", via, why))
        return out

    def prove(self):
        rows, failures = [], []
        for src, dst, ip, port, expected, via, why in self.checks():
            if dst in self.hosts and not self.listening(dst, ip, port):
                failures.append(f"{dst} does not listen on {ip}:{port}: the probe would prove "
                                "nothing")
            result, dropped = self.try_connect(src, ip, port, via)
            if expected == "allowed":
                ok = result == "connected"
                how = result
            else:
                # Refused means nobody answered: no route, or the fabric dropped it (and counted
                # it). A reset would mean the packet reached a host.
                ok = (result == "no route") or (result == "no answer" and dropped > 0)
                if result == "no route":
                    how = "no route (no shared network)"
                elif result == "no answer" and dropped > 0:
                    how = f"dropped by the fabric ({dropped} counted)"
                elif result == "no answer":
                    how = "no answer, but the fabric let it through (a host dropped it)"
                elif result == "reset":
                    how = "reset by the target: the fabric let it through"
                else:
                    how = result
            via_text = f" via {via}" if via else ""
            rows.append((f"{src} → {dst} {ip}:{port}{via_text}", expected,
                         "allowed" if result == "connected" else "refused", how, ok, why))
            if not ok:
                failures.append(f"{src} → {dst} {ip}:{port}{via_text}: expected {expected}, "
                                f"got {how}")
        return rows, failures

    def print_matrix(self, rows):
        w = max(len(r[0]) for r in rows)
        print(f"\n{'flow':<{w}}  {'expected':<8}  {'observed':<8}  how")
        print(f"{'-' * w}  {'-' * 8}  {'-' * 8}  {'-' * 40}")
        for flow, expected, observed, how, ok, why in rows:
            mark = "" if ok else "   <-- WRONG"
            print(f"{flow:<{w}}  {expected:<8}  {observed:<8}  {how}; {why}{mark}")
        print()

    # -- teardown --
    def teardown(self):
        for ns in reversed(self.namespaces):
            stop_namespace(ns)
        self.namespaces = []
        for _, p, _ in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.work:
            if self.args.logs:
                dest = os.path.join(self.args.logs, f"pci-testbed-{os.getpid()}")
                shutil.copytree(os.path.join(self.work, "logs"), dest, dirs_exist_ok=True)
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None


def stop_namespace(ns):
    """Stops every process in `ns` (SIGTERM; PostgreSQL's fast shutdown is SIGINT), then
    SIGKILL after 5 s, and deletes the namespace."""
    def pids():
        out = run(["ip", "netns", "pids", ns], check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    for pid in pids():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    run(["ip", "netns", "del", ns], check=False)


def remove_leftovers():
    """Namespaces of an earlier run whose process is gone (a run killed before its teardown)."""
    out = run(["ip", "netns", "list"], check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue  # a run in progress: not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        log(f"removing {name}, left by an interrupted run")
        stop_namespace(name)
    for d in os.listdir("/var/tmp"):
        parts = d.split("-")
        if len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit():
            try:
                os.kill(int(parts[1]), 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join("/var/tmp", d), ignore_errors=True)
            except PermissionError:
                pass


def preflight():
    """The reason this machine cannot run the testbed, or None."""
    if os.geteuid() != 0:
        return "not root (network namespaces, bridges and nftables need CAP_NET_ADMIN)"
    for tool in ["ip", "nft", "openssl", "runuser"]:
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: iproute2, nftables, openssl, util-linux)"
    if not os.path.exists(f"{PG_BIN}/initdb"):
        return f"PostgreSQL's server binaries are not in {PG_BIN}"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no `postgres` user to run the database clusters as"
    probe_ns = f"{PREFIX}-{os.getpid()}-preflight"
    r = run(["ip", "netns", "add", probe_ns], check=False)
    if r.returncode != 0:
        return f"network namespaces are not permitted here ({r.stderr.strip()})"
    try:
        r = run(["ip", "-n", probe_ns, "link", "add", "br-probe", "type", "bridge"], check=False)
        if r.returncode != 0:
            return f"bridges are not permitted here ({r.stderr.strip()})"
        r = ns_run(probe_ns, ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
                   check=False)
        if r.returncode != 0:
            return "br_netfilter is not available (net.bridge.bridge-nf-call-iptables)"
        r = ns_run(probe_ns, ["nft", "add", "table", "inet", "probe"], check=False)
        if r.returncode != 0:
            return f"nftables is not usable here ({r.stderr.strip()})"
    finally:
        run(["ip", "netns", "del", probe_ns], check=False)
    return None


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        print(probe(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "listen":
        listen(sys.argv[2:])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "e2e":
        e2e(*sys.argv[2:6])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--carebill", required=True, help="the carebill binary")
    parser.add_argument("--tokenizer", required=True, help="the tokenizer binary")
    parser.add_argument("--logs", help="keep the processes' logs in this directory")
    args = parser.parse_args()
    args.carebill = os.path.abspath(args.carebill)
    args.tokenizer = os.path.abspath(args.tokenizer)

    why = preflight()
    if why:
        print(f"SKIPPED: the PCI segmentation testbed cannot run here: {why}", flush=True)
        return SKIP
    remove_leftovers()

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    bed = Testbed(args)
    started = time.monotonic()
    try:
        bed.build_network()
        ca, key_file = bed.start_all()
        internet = bed.ns("internet")
        tok = bed.hosts["tokenizer"]["addresses"]
        cb = bed.hosts["carebill"]["addresses"]
        r = ns_run(internet, [sys.executable, os.path.abspath(__file__), "e2e",
                              f"{BILLING_SCHEME}://{cb['edge']}:8443",
                              f"https://{tok['edge']}:8444", ca, key_file], check=False)
        e2e_failure = None
        if r.returncode != 0:
            e2e_failure = f"the payment across the segments failed: {r.stderr.strip()[-600:]}"
        else:
            summary = json.loads(r.stdout)
            card = summary.get("card") or {}
            if not (summary["payment_status"] == "succeeded" and summary["payment_method_is_token"]
                    and card.get("last4") == "4242"):
                e2e_failure = f"the payment across the segments did not succeed: {summary}"
        rows, failures = bed.prove()
        rows.append(("internet → tokenizer (card), → carebill (token) → tokenizer (payment method)",
                     "allowed", "refused" if e2e_failure else "allowed",
                     "a payment by card token" + (" FAILED" if e2e_failure else " succeeded"),
                     e2e_failure is None, "end to end across the segments"))
        if e2e_failure:
            failures.append(e2e_failure)
        bed.print_matrix(rows)
        print(f"testbed: {len(rows)} flows checked in {time.monotonic() - started:.1f} s")
        if failures:
            for f in failures:
                print(f"FAIL: {f}")
            return 1
        print("PASS: every flow is as the topology says")
        return 0
    except subprocess.CalledProcessError as e:
        print(f"FAIL: {' '.join(map(str, e.cmd[:6]))} … exited {e.returncode}: "
              f"{(e.stderr or '').strip()[-600:]}")
        return 1
    except RuntimeError as e:
        print(f"FAIL: {e}")
        for name, _, path in bed.procs:
            try:
                tail = open(path, errors="replace").read()[-1500:]
            except OSError:
                tail = ""
            print(f"--- {name} log (tail) ---\n{tail}")
        return 1
    finally:
        bed.teardown()


if __name__ == "__main__":
    sys.exit(main())
